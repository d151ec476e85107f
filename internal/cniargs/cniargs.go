// Package cniargs reads CNI_ARGS ("K=V;K=V"). Runtimes pass more keys than
// a plugin uses (IgnoreUnknown=1, K8S_POD_*), so nothing here rejects an
// unknown key or a malformed pair: readers pick the keys they know.
package cniargs

import "strings"

// Values returns every value given for key, in order. Keys are compared
// after trimming spaces; values are returned as given.
func Values(args, key string) []string {
	var out []string
	for _, pair := range strings.Split(args, ";") {
		k, v, ok := strings.Cut(pair, "=")
		if ok && strings.TrimSpace(k) == key {
			out = append(out, v)
		}
	}
	return out
}

// Last returns the last value given for key ("" when absent).
func Last(args, key string) string {
	vs := Values(args, key)
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}
