package iptables

import "github.com/weftnet/weft/internal/iptables/syntax"

// The rule text helpers live in the pure package syntax; these names keep
// the callers of this shim unchanged.

// Chain, Dump and IPSet are the parsed forms of a dump (see syntax).
type (
	Chain = syntax.Chain
	Dump  = syntax.Dump
	IPSet = syntax.IPSet
)

// MaxComment is the longest rule comment the kernel keeps.
const MaxComment = syntax.MaxComment

// BoundComment: see syntax.BoundComment.
func BoundComment(s string) string { return syntax.BoundComment(s) }

// ParseSave: see syntax.ParseSave.
func ParseSave(text, table string) (*Dump, error) { return syntax.ParseSave(text, table) }

// ParseIPSetSave: see syntax.ParseIPSetSave.
func ParseIPSetSave(text string) (map[string]*IPSet, error) { return syntax.ParseIPSetSave(text) }

// SplitArgs: see syntax.SplitArgs.
func SplitArgs(line string) ([]string, error) { return syntax.SplitArgs(line) }

// Quote: see syntax.Quote.
func Quote(s string) string { return syntax.Quote(s) }

// Comment: see syntax.Comment.
func Comment(args []string) string { return syntax.Comment(args) }

// HashComment: see syntax.HashComment.
func HashComment(hash, text string) string { return syntax.HashComment(hash, text) }

// HashOf: see syntax.HashOf.
func HashOf(args []string) string { return syntax.HashOf(args) }
