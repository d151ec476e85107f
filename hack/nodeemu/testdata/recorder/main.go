// Command recorder is a chained CNI plugin for the emulator's tests: it
// appends what the runtime passed (command, netns, CNI_ARGS, runtimeConfig,
// whether a prevResult came) as one JSON line to the file named by the
// config's "logFile", and passes the prevResult through on ADD.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
)

type conf struct {
	CNIVersion    string                     `json:"cniVersion"`
	LogFile       string                     `json:"logFile"`
	RuntimeConfig map[string]json.RawMessage `json:"runtimeConfig"`
	PrevResult    json.RawMessage            `json:"prevResult"`
}

func main() {
	if err := run(); err != nil {
		fmt.Printf(`{"cniVersion":"1.0.0","code":999,"msg":%q}`, err.Error())
		os.Exit(1)
	}
}

func run() error {
	cmd := os.Getenv("CNI_COMMAND")
	if cmd == "VERSION" {
		fmt.Print(`{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}`)
		return nil
	}
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	var c conf
	if err := json.Unmarshal(in, &c); err != nil {
		return err
	}
	keys := []string{}
	for k := range c.RuntimeConfig {
		keys = append(keys, k)
	}
	line, _ := json.Marshal(map[string]any{
		"command": cmd, "netns": os.Getenv("CNI_NETNS"), "args": os.Getenv("CNI_ARGS"),
		"ifname": os.Getenv("CNI_IFNAME"), "containerID": os.Getenv("CNI_CONTAINERID"),
		"runtimeConfig": c.RuntimeConfig, "prevResult": len(c.PrevResult) > 0 && string(c.PrevResult) != "null",
	})
	f, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(append(line, '\n')); err != nil {
		return err
	}
	if cmd == "ADD" {
		if len(c.PrevResult) == 0 {
			return fmt.Errorf("recorder must be chained after a plugin that returns a result")
		}
		os.Stdout.Write(c.PrevResult)
	}
	return nil
}
