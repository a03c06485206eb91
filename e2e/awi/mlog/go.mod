// A stand-in for monis.app/mlog, which the Go module proxy does not serve at any version. It
// provides only what the Azure Workload Identity webhook (cmd/webhook, pkg/webhook) calls, on top
// of the standard library's log/slog and go-logr. See ../README.md.
module monis.app/mlog

go 1.24

require github.com/go-logr/logr v1.4.3
