// Package mlog is a small replacement of monis.app/mlog for building the Azure Workload Identity
// webhook in the e2e suite. It implements the logging calls of that webhook's cmd/webhook and
// pkg/webhook packages with log/slog: leveled, structured (JSON or text) logs on standard error.
// It contains no logic of the webhook itself.
package mlog

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"

	"github.com/go-logr/logr"
)

// LogLevel is a verbosity: the empty string (warnings and errors), info, debug, trace or all.
type LogLevel string

// The levels, from least to most verbose.
const (
	LevelWarning LogLevel = ""
	LevelInfo    LogLevel = "info"
	LevelDebug   LogLevel = "debug"
	LevelTrace   LogLevel = "trace"
	LevelAll     LogLevel = "all"
)

// LogFormat is the output format.
type LogFormat string

// The formats.
const (
	FormatJSON LogFormat = "json"
	FormatText LogFormat = "text"
)

// LogSpec is the global configuration.
type LogSpec struct {
	Level  LogLevel
	Format LogFormat
}

// slog levels below Debug for trace and all.
const (
	slogTrace = slog.Level(-8)
	slogAll   = slog.Level(-12)
)

func toSlog(l LogLevel) (slog.Level, error) {
	switch l {
	case LevelWarning, "warning":
		return slog.LevelWarn, nil
	case LevelInfo:
		return slog.LevelInfo, nil
	case LevelDebug:
		return slog.LevelDebug, nil
	case LevelTrace:
		return slogTrace, nil
	case LevelAll:
		return slogAll, nil
	}
	return 0, fmt.Errorf("unknown log level %q (want one of: \"\", info, debug, trace, all)", string(l))
}

var (
	level   = new(slog.LevelVar)
	handler atomic.Pointer[slog.Handler]
)

func init() {
	level.Set(slog.LevelWarn)
	setHandler(FormatJSON)
}

func setHandler(f LogFormat) {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	if f == FormatText {
		h = slog.NewTextHandler(os.Stderr, opts)
	} else {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	handler.Store(&h)
}

func current() slog.Handler { return *handler.Load() }

// ValidateAndSetLogLevelAndFormatGlobally applies spec to every logger.
func ValidateAndSetLogLevelAndFormatGlobally(_ context.Context, spec LogSpec) error {
	l, err := toSlog(spec.Level)
	if err != nil {
		return err
	}
	switch spec.Format {
	case "", FormatJSON, FormatText:
	default:
		return fmt.Errorf("unknown log format %q (want json or text)", string(spec.Format))
	}
	level.Set(l)
	setHandler(spec.Format)
	return nil
}

// Enabled reports whether messages at l are written.
func Enabled(l LogLevel) bool {
	sl, err := toSlog(l)
	return err == nil && sl >= level.Level()
}

// Setup prepares logging; the returned function flushes it (nothing is buffered here).
func Setup() func() { return func() {} }

// Logger is a named logger with fixed key/value pairs.
type Logger struct {
	name  string
	attrs []any
}

// New returns a logger without name or values.
func New() Logger { return Logger{} }

// WithName returns a logger whose name has n appended.
func (l Logger) WithName(n string) Logger {
	if l.name != "" {
		n = l.name + "." + n
	}
	return Logger{name: n, attrs: l.attrs}
}

// WithValues returns a logger that adds these key/value pairs to every message.
func (l Logger) WithValues(keysAndValues ...any) Logger {
	attrs := append(append([]any{}, l.attrs...), keysAndValues...)
	return Logger{name: l.name, attrs: attrs}
}

func (l Logger) log(lv slog.Level, msg string, keysAndValues []any) {
	h := current()
	if !h.Enabled(context.Background(), lv) {
		return
	}
	logger := slog.New(h)
	if l.name != "" {
		logger = logger.With("logger", l.name)
	}
	logger.With(l.attrs...).Log(context.Background(), lv, msg, keysAndValues...)
}

// Error logs err at error level.
func (l Logger) Error(msg string, err error, keysAndValues ...any) {
	l.log(slog.LevelError, msg, append([]any{"error", fmt.Sprint(err)}, keysAndValues...))
}

// Warning logs at warning level.
func (l Logger) Warning(msg string, keysAndValues ...any) { l.log(slog.LevelWarn, msg, keysAndValues) }

// Info logs at info level.
func (l Logger) Info(msg string, keysAndValues ...any) { l.log(slog.LevelInfo, msg, keysAndValues) }

// Debug logs at debug level.
func (l Logger) Debug(msg string, keysAndValues ...any) { l.log(slog.LevelDebug, msg, keysAndValues) }

// Trace logs at trace level.
func (l Logger) Trace(msg string, keysAndValues ...any) { l.log(slogTrace, msg, keysAndValues) }

// Fatal logs err and exits with status 1.
func Fatal(err error, keysAndValues ...any) {
	New().Error("fatal", err, keysAndValues...)
	os.Exit(1)
}

// Logr returns a go-logr logger writing through the same handler (for controller-runtime).
func Logr() logr.Logger {
	return logr.FromSlogHandler(current())
}
