package ipip

import (
	"os"
	"strconv"
)

func init() {
	if v := os.Getenv("PROBE_V"); v != "" {
		ProbeVariant, _ = strconv.Atoi(v)
	}
}
