// Command ckb-gitops-check runs the health checks GitOps tools apply to a Kubernetes object, with
// the same libraries those tools use, so the end-to-end tests can assert what Flux and Argo CD
// would show for a live ConfidentialKeyBinding:
//
//	ckb-gitops-check kstatus < object.json
//	    computes the verdict of sigs.k8s.io/cli-utils/pkg/kstatus/status (the library behind
//	    Flux's health checks and `kstatus`-based waits): Current, InProgress, Failed, ...
//	ckb-gitops-check lua health.lua < object.json
//	    runs an Argo CD health script in gopher-lua (the interpreter Argo CD embeds) set up the way
//	    Argo CD sets it up for a health check: no standard libraries but package, base and table,
//	    the object as the global `obj`, and the returned table read as {status, message}.
//
// Both print one JSON object on stdout: {"status": "...", "message": "..."}. The exit code is 0
// when a verdict was computed (whatever it is) and 1 on bad input or a failing script.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ckb-gitops-check:", err)
		os.Exit(1)
	}
}

func run(args []string, in io.Reader, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: ckb-gitops-check kstatus | lua <script.lua>  (object as JSON on stdin)")
	}
	raw, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		return fmt.Errorf("stdin is not a JSON object: %w", err)
	}
	var v verdict
	switch args[0] {
	case "kstatus":
		v, err = kstatusVerdict(obj)
	case "lua":
		if len(args) != 2 {
			return errors.New("usage: ckb-gitops-check lua <script.lua>")
		}
		var script []byte
		script, err = os.ReadFile(args[1])
		if err == nil {
			v, err = luaHealth(obj, string(script))
		}
	default:
		return fmt.Errorf("unknown check %q (kstatus or lua)", args[0])
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(out).Encode(v)
}

func kstatusVerdict(obj map[string]any) (verdict, error) {
	// Through a JSON round trip the way client-go decodes objects: integers become int64, which
	// is what kstatus's generation checks read.
	u := &unstructured.Unstructured{}
	data, err := json.Marshal(obj)
	if err != nil {
		return verdict{}, err
	}
	if err := u.UnmarshalJSON(data); err != nil {
		return verdict{}, fmt.Errorf("not a Kubernetes object: %w", err)
	}
	res, err := status.Compute(u)
	if err != nil {
		return verdict{}, fmt.Errorf("kstatus: %w", err)
	}
	return verdict{Status: res.Status.String(), Message: res.Message}, nil
}

// The health codes Argo CD accepts from a script; anything else it shows as Unknown.
var argoHealth = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

func luaHealth(obj map[string]any, script string) (verdict, error) {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := L.CallByParam(lua.P{Fn: L.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return verdict{}, fmt.Errorf("opening %s: %w", lib.name, err)
		}
	}
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return verdict{}, fmt.Errorf("health script failed: %w", err)
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return verdict{}, fmt.Errorf("health script returned %s, not a table", L.Get(-1).Type())
	}
	v := verdict{Status: lua.LVAsString(ret.RawGetString("status")), Message: lua.LVAsString(ret.RawGetString("message"))}
	if !argoHealth[v.Status] {
		return verdict{Status: "Unknown", Message: fmt.Sprintf("invalid health status %q", v.Status)}, nil
	}
	return v, nil
}

// toLua converts a decoded JSON value: objects to string-keyed tables, arrays to sequences
// (indexed from 1), numbers, strings and booleans to their Lua values, null to nil.
func toLua(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case map[string]any:
		t := L.CreateTable(0, len(x))
		for k, e := range x {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	case []any:
		t := L.CreateTable(len(x), 0)
		for _, e := range x {
			t.Append(toLua(L, e))
		}
		return t
	case string:
		return lua.LString(x)
	case float64:
		return lua.LNumber(x)
	case bool:
		return lua.LBool(x)
	default:
		return lua.LNil
	}
}
