package syntax

import "strings"

// HashPrefix starts the comment of a rule that carries its own identity:
// "weft:<hash> <text>". A writer compares such a rule with what it wants
// by the hash alone (see HashOf).
const HashPrefix = "weft:"

// HashComment returns the bounded comment "weft:<hash> <text>".
func HashComment(hash, text string) string { return BoundComment(HashPrefix + hash + " " + text) }

// HashOf returns the hash of a rule whose comment is "weft:<hash> ...",
// "" when it has none.
func HashOf(args []string) string {
	c, ok := strings.CutPrefix(Comment(args), HashPrefix)
	if !ok {
		return ""
	}
	h, _, _ := strings.Cut(c, " ")
	return h
}
