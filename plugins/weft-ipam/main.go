// Command weft-ipam is weft's IPAM CNI plugin: host-local compatible ranges
// plus allocation from the node subnet weftd writes. The logic lives in
// package ipam; see its documentation for the configuration keys.
package main

import (
	"encoding/json"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weftnet/weft/ipam"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Del:    ipam.CmdDel,
		Check:  ipam.CmdCheck,
		GC:     ipam.CmdGC,
		Status: ipam.CmdStatus,
	}, version.PluginSupports(ipam.SupportedVersions()...), "CNI plugin weft-ipam")
}

func cmdAdd(args *skel.CmdArgs) error {
	res, err := ipam.CmdAdd(args)
	if err != nil {
		return err
	}
	var conf struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(args.StdinData, &conf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "decode cniVersion: "+err.Error(), "")
	}
	return types.PrintResult(res, conf.CNIVersion)
}
