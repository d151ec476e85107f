package iptables

import (
	"regexp"
	"strings"
)

var counters = regexp.MustCompile(`\[[0-9]+:[0-9]+\]`)

// NormalizeSave returns iptables-save output without its "#" lines and
// with every "[packets:bytes]" counter zeroed, so dumps of the same rules
// taken at different times, with either backend or from the fake table,
// compare byte for byte.
func NormalizeSave(text string) string {
	var b strings.Builder
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b.WriteString(counters.ReplaceAllString(line, "[0:0]"))
		b.WriteByte('\n')
	}
	return b.String()
}
