package bgp

import (
	"context"
	"log/slog"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// logAdapter hands GoBGP's logs to slog. GoBGP's Info is chatty (every
// state change of every session), so it goes to Debug; the speaker logs
// what matters itself.
type logAdapter struct {
	log   *slog.Logger
	level gobgplog.LogLevel
}

func newLogAdapter(l *slog.Logger) *logAdapter {
	return &logAdapter{log: l.With("component", "gobgp"), level: gobgplog.InfoLevel}
}

func (a *logAdapter) emit(level slog.Level, msg string, fields gobgplog.Fields) {
	if !a.log.Enabled(context.Background(), level) {
		return
	}
	args := make([]any, 0, 2*len(fields))
	for k, v := range fields {
		args = append(args, k, v)
	}
	a.log.Log(context.Background(), level, msg, args...)
}

func (a *logAdapter) Panic(msg string, f gobgplog.Fields) {
	a.emit(slog.LevelError, msg, f)
	panic(msg)
}
func (a *logAdapter) Fatal(msg string, f gobgplog.Fields) {
	a.emit(slog.LevelError, msg, f)
	panic(msg)
}
func (a *logAdapter) Error(msg string, f gobgplog.Fields) { a.emit(slog.LevelError, msg, f) }
func (a *logAdapter) Warn(msg string, f gobgplog.Fields)  { a.emit(slog.LevelWarn, msg, f) }
func (a *logAdapter) Info(msg string, f gobgplog.Fields)  { a.emit(slog.LevelDebug, msg, f) }
func (a *logAdapter) Debug(msg string, f gobgplog.Fields) { a.emit(slog.LevelDebug-4, msg, f) }

func (a *logAdapter) SetLevel(l gobgplog.LogLevel) { a.level = l }
func (a *logAdapter) GetLevel() gobgplog.LogLevel  { return a.level }
