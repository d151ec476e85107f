package disk

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"strconv"
	"strings"

	"github.com/weftnet/weft/ipam/store"
)

// A slot is line oriented, so that reading and rewriting it stays far below
// a plugin start even with hundreds of pods:
//
//	weft-ipam 1 <generation>
//	boot <kernel boot ID when written>
//	last <range set index> <address>
//	<address> <container ID> <ifname>
//	...
//	end <number of allocations> <crc32c, hex, of every byte before "end">
//
// The trailer detects a slot torn by a killed writer (a prefix of the new
// state over the tail of the old one). Container IDs and ifnames never hold
// whitespace (the ipam package refuses them).
//
// A slot whose header names another format version, or whose checksum holds
// but which carries a record this code does not know, was written by another
// (newer) weft-ipam: it is not damage, and decode reports ErrUnknownFormat.
const magic = "weft-ipam 1 "

// formatPrefix starts the header of every format version.
const formatPrefix = "weft-ipam "

// ErrUnknownFormat marks a slot written in a format this weft-ipam cannot
// read although it is not damaged (another format version, or an unknown
// record under a valid checksum). The store refuses such state: reading it
// as empty would hand out addresses that running pods hold.
var ErrUnknownFormat = errors.New("state written in a format this weft-ipam does not know")

// otherVersion returns the format version in data's header when it is a
// well-formed version number other than 1.
func otherVersion(data []byte) (string, bool) {
	line, _, _ := bytes.Cut(data, []byte{'\n'})
	rest, ok := bytes.CutPrefix(line, []byte(formatPrefix))
	if !ok {
		return "", false
	}
	v, _, _ := bytes.Cut(rest, []byte{' '})
	n, err := strconv.ParseUint(string(v), 10, 32)
	if err != nil || n == 1 || len(v) > 9 || v[0] == '0' {
		return "", false
	}
	return string(v), true
}

func crcTable() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) }

// slot is one decoded state slot.
type slot struct {
	st   *store.State
	gen  uint64
	boot string // "" when unknown
}

// encode renders a slot.
func encode(sl slot) []byte {
	st := sl.st
	var b bytes.Buffer
	b.Grow(96 + 80*len(st.Allocations))
	b.WriteString(magic)
	b.WriteString(strconv.FormatUint(sl.gen, 10))
	b.WriteByte('\n')
	if sl.boot != "" {
		b.WriteString("boot ")
		b.WriteString(sl.boot)
		b.WriteByte('\n')
	}
	for i, a := range st.LastReserved {
		if !a.IsValid() {
			continue
		}
		b.WriteString("last ")
		b.WriteString(strconv.Itoa(i))
		b.WriteByte(' ')
		b.WriteString(a.String())
		b.WriteByte('\n')
	}
	for _, a := range st.Allocations {
		b.WriteString(a.IP.String())
		b.WriteByte(' ')
		b.WriteString(a.ContainerID)
		b.WriteByte(' ')
		b.WriteString(a.IfName)
		b.WriteByte('\n')
	}
	sum := crc32.Checksum(b.Bytes(), crcTable())
	fmt.Fprintf(&b, "end %d %08x\n", len(st.Allocations), sum)
	return b.Bytes()
}

// headerGen returns the generation in data's first line, or 0.
func headerGen(data []byte) uint64 {
	line, _, _ := bytes.Cut(data, []byte{'\n'})
	rest, ok := bytes.CutPrefix(line, []byte(magic))
	if !ok {
		return 0
	}
	g, err := strconv.ParseUint(string(rest), 10, 64)
	if err != nil {
		return 0
	}
	return g
}

var errTorn = errors.New("slot incomplete or torn (checksum mismatch)")

// decode parses and verifies a slot.
func decode(data []byte) (slot, error) {
	st, gen, boot, err := decodeParts(data)
	return slot{st: st, gen: gen, boot: boot}, err
}

func decodeParts(data []byte) (*store.State, uint64, string, error) {
	// Another version's trailer may differ: look at the header first.
	if v, ok := otherVersion(data); ok {
		return nil, 0, "", fmt.Errorf("%w: format version %s (this weft-ipam reads version 1)", ErrUnknownFormat, v)
	}
	// Verify the trailer before parsing anything.
	body := bytes.TrimSuffix(data, []byte{'\n'})
	cut := bytes.LastIndexByte(body, '\n')
	if cut < 0 || len(body) == len(data) {
		return nil, 0, "", errTorn
	}
	body, trailer := data[:cut+1], string(data[cut+1:len(data)-1])
	f := strings.Fields(trailer)
	if len(f) != 3 || f[0] != "end" {
		return nil, 0, "", errTorn
	}
	sum, err := strconv.ParseUint(f[2], 16, 32)
	if err != nil || uint32(sum) != crc32.Checksum(body, crcTable()) {
		return nil, 0, "", errTorn
	}
	count, err := strconv.Atoi(f[1])
	if err != nil || count < 0 {
		return nil, 0, "", errTorn
	}
	s := string(body)
	line, rest, _ := strings.Cut(s, "\n")
	genStr, ok := strings.CutPrefix(line, magic)
	if !ok {
		return nil, 0, "", fmt.Errorf("%w: header %q", ErrUnknownFormat, line)
	}
	gen, err := strconv.ParseUint(genStr, 10, 64)
	if err != nil {
		return nil, 0, "", fmt.Errorf("%w: header %q: %w", ErrUnknownFormat, line, err)
	}
	st, boot, err := decodeRecords(rest, count)
	if err != nil {
		// The checksum holds, so this is no damage: another writer's record.
		return nil, 0, "", fmt.Errorf("%w: %w", ErrUnknownFormat, err)
	}
	return st, gen, boot, nil
}

// decodeRecords parses the lines between header and trailer.
func decodeRecords(rest string, count int) (*store.State, string, error) {
	st := &store.State{Allocations: make([]store.Allocation, 0, count)}
	boot := ""
	if b, r, ok := strings.Cut(rest, "\n"); ok && strings.HasPrefix(b, "boot ") {
		boot, rest = strings.TrimPrefix(b, "boot "), r
	}
	var line string
	for n := 2; rest != ""; n++ {
		line, rest, _ = strings.Cut(rest, "\n")
		f0, f12, ok1 := strings.Cut(line, " ")
		f1, f2, ok2 := strings.Cut(f12, " ")
		if !ok1 || !ok2 || f0 == "" || f1 == "" || f2 == "" || strings.ContainsAny(f2, " \t\r") {
			return nil, "", fmt.Errorf("line %d: unknown record %q", n, line)
		}
		if f0 == "last" {
			i, err := strconv.Atoi(f1)
			if err != nil || i < 0 || i > 1024 {
				return nil, "", fmt.Errorf("line %d: bad range set index %q", n, f1)
			}
			a, err := netip.ParseAddr(f2)
			if err != nil {
				return nil, "", fmt.Errorf("line %d: %w", n, err)
			}
			st.SetLast(i, a)
			continue
		}
		a, err := netip.ParseAddr(f0)
		if err != nil {
			return nil, "", fmt.Errorf("line %d: %w", n, err)
		}
		st.Allocations = append(st.Allocations, store.Allocation{IP: a, ContainerID: f1, IfName: f2})
	}
	if len(st.Allocations) != count {
		return nil, "", fmt.Errorf("trailer says %d allocations, found %d", count, len(st.Allocations))
	}
	return st, boot, nil
}
