// Package manifests holds weft's deployment manifests (weft.yaml); its test
// checks that they decode and carry what weftd relies on.
package manifests
