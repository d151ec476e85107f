// Package bgp is weft's BGP speaker room: the typed backend section of
// net-conf.json for type bgp (DecodeConfig), the pure session topology
// (Sessions: full mesh, route reflectors, external peers), the pure import
// filter (ImportPolicy.Accept), and the Speaker interface with its one
// implementation on an embedded GoBGP v3 (GoBGP). Prefixes and peers go
// in, accepted learned routes come out; installing them into the kernel is
// the route writer's job, and nothing here knows about Kubernetes. GoBGP's
// API is used only in the gobgp*.go and log.go files, so moving to GoBGP
// v4 changes this room only.
package bgp
