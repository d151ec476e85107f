package backend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// DecodeSection decodes a backend's section of net-conf.json strictly into
// section, a pointer to the backend's wire struct already holding its
// defaults, whose `json:"type"` field is *typeField: unknown fields are an
// error, and so is a type other than want (it may be left out). An empty
// section leaves the defaults. Checking the values is the backend's.
func DecodeSection(raw json.RawMessage, want string, section any, typeField *string) error {
	if len(raw) > 0 {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(section); err != nil {
			return fmt.Errorf("decode: %w", err)
		}
	}
	if *typeField != "" && *typeField != want {
		return fmt.Errorf("type %q is not %q", *typeField, want)
	}
	return nil
}

// GuardRemover is what Teardown needs of the encapsulation guard
// (encapguard.Guard).
type GuardRemover interface {
	Remove(ctx context.Context, kind string) error
}

// Teardown removes what a backend of type typ left on the node: its
// device (removeDevice, which also takes every route and entry on it) and
// its guard's chains and set. A nil removeDevice or guard is skipped;
// every error is kept, prefixed with typ.
func Teardown(ctx context.Context, typ string, removeDevice func() error, guard GuardRemover) error {
	var errs []error
	if removeDevice != nil {
		if err := removeDevice(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", typ, err))
		}
	}
	if guard != nil {
		if err := guard.Remove(ctx, typ); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", typ, err))
		}
	}
	return errors.Join(errs...)
}
