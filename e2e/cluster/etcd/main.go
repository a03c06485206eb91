// Command etcd is the etcd server, built from the same module graph as the Kubernetes release the
// tests pin, so that no separate etcd download is needed.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
