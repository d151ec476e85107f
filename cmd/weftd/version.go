package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// printVersion writes one line: weftd's module version (a tag or pseudo-
// version, "(devel)" for a build from a plain source tree), the VCS revision
// when the build recorded one, the Go version and platform, and how it was
// linked (CGO_ENABLED=0 means a static binary).
func printVersion(w io.Writer) error {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return fmt.Errorf("no build information in this binary")
	}
	fields := []string{"weftd", bi.Main.Version}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if rev := settings["vcs.revision"]; rev != "" {
		if settings["vcs.modified"] == "true" {
			rev += "-dirty"
		}
		fields = append(fields, "revision="+rev)
	}
	fields = append(fields, bi.GoVersion, runtime.GOOS+"/"+runtime.GOARCH)
	if v, ok := settings["CGO_ENABLED"]; ok {
		fields = append(fields, "CGO_ENABLED="+v)
	}
	_, err := fmt.Fprintln(w, strings.Join(fields, " "))
	return err
}
