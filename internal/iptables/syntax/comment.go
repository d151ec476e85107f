package syntax

import (
	"crypto/sha256"
	"encoding/hex"
	"unicode/utf8"
)

// MaxComment is the longest rule comment the kernel keeps: the comment
// match stores XT_MAX_COMMENT_LEN (256) bytes including the terminating NUL.
// iptables 1.8.9 (legacy and nft) truncates a longer one silently, other
// versions and tools reject the rule, so a writer that wants to read back
// what it wrote must never hand over more.
const MaxComment = 255

// commentHashLen is how much of the full comment's hash a bounded one keeps.
const commentHashLen = 8

// BoundComment returns s when it fits in a rule comment. A longer s is cut
// to MaxComment bytes: its head (on a UTF-8 boundary), "~" and a hash of
// the whole s, so two long comments that share their head stay apart and
// the same s always gives the same text. Every comment Weft writes goes
// through here.
func BoundComment(s string) string {
	if len(s) <= MaxComment {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	tail := "~" + hex.EncodeToString(sum[:])[:commentHashLen]
	head := s[:MaxComment-len(tail)]
	for head != "" && !utf8.ValidString(head) { // do not split a rune
		head = head[:len(head)-1]
	}
	return head + tail
}
