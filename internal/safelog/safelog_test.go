package safelog_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/tiercache/tiercache/internal/safelog"
)

// faulty is a text handler that panics in the method named by panicIn.
type faulty struct {
	slog.Handler
	panicIn string
}

func (f faulty) Enabled(ctx context.Context, l slog.Level) bool {
	if f.panicIn == "Enabled" {
		panic("Enabled bug")
	}
	return f.Handler.Enabled(ctx, l)
}

func (f faulty) Handle(ctx context.Context, r slog.Record) error {
	if f.panicIn == "Handle" {
		panic("Handle bug")
	}
	return f.Handler.Handle(ctx, r)
}

func (f faulty) WithAttrs(attrs []slog.Attr) slog.Handler {
	if f.panicIn == "WithAttrs" {
		panic("WithAttrs bug")
	}
	return faulty{Handler: f.Handler.WithAttrs(attrs), panicIn: f.panicIn}
}

func (f faulty) WithGroup(name string) slog.Handler {
	if f.panicIn == "WithGroup" {
		panic("WithGroup bug")
	}
	return faulty{Handler: f.Handler.WithGroup(name), panicIn: f.panicIn}
}

// Each method of a handler that panics loses what it was given and is
// counted; the caller goes on, and what does not touch the faulty method
// is written as usual.
func TestHandlerPanics(t *testing.T) {
	for _, tc := range []struct {
		panicIn string
		want    string // what the record after the faulty call writes
		panics  int
	}{
		{"", `msg=after g.a=1`, 0},
		{"Enabled", ``, 2}, // every record is refused
		{"Handle", ``, 2},
		{"WithAttrs", `msg=after`, 1},     // a=1 lost; the group is on the record's attrs
		{"WithGroup", `msg=after a=1`, 1}, // the group lost
	} {
		t.Run("panic in "+tc.panicIn, func(t *testing.T) {
			var buf bytes.Buffer
			panics := 0
			l := safelog.New(slog.New(faulty{Handler: slog.NewTextHandler(&buf, nil), panicIn: tc.panicIn}), func() { panics++ })
			l.Info("before")
			l.WithGroup("g").With("a", 1).Info("after")
			out := buf.String()
			if tc.panicIn == "Enabled" || tc.panicIn == "Handle" {
				if out != "" {
					t.Fatalf("wrote %q; want nothing", out)
				}
			} else {
				if !strings.Contains(out, "msg=before") {
					t.Fatalf("wrote %q; want the first record", out)
				}
				if !strings.Contains(out, tc.want) {
					t.Fatalf("wrote %q; want %q", out, tc.want)
				}
			}
			if panics != tc.panics {
				t.Fatalf("onPanic called %d times; want %d", panics, tc.panics)
			}
		})
	}
}

// A nil onPanic is allowed, and a nil logger means slog.Default's handler.
func TestNilArguments(t *testing.T) {
	var buf bytes.Buffer
	l := safelog.New(slog.New(faulty{Handler: slog.NewTextHandler(&buf, nil), panicIn: "Handle"}), nil)
	l.Info("lost")
	if buf.Len() != 0 {
		t.Fatalf("wrote %q", buf.String())
	}
	if safelog.New(nil, nil).Handler() == nil {
		t.Fatal("no handler")
	}
}
