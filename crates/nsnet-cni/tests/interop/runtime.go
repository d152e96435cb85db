// A minimal container runtime for nsnet-cni's interop test: it loads a network configuration list from a
// directory with libcni (Debian's golang-github-appc-cni-dev) and runs one operation on it, the way
// containerd and CRI-O do through the same library.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if len(os.Args) != 7 {
		fmt.Fprintln(os.Stderr, "usage: cni-runtime add|check|del CONFDIR NETWORK NETNS CONTAINERID CACHEDIR")
		os.Exit(2)
	}
	op, confDir, network, netns, id, cacheDir := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6]
	list, err := libcni.LoadConfList(confDir, network)
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), cacheDir, nil)
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: "eth0"}
	// HOST_PORT=N publishes container port 80 on host port N, as a runtime does for `-p N:80`.
	if port, err := strconv.Atoi(os.Getenv("HOST_PORT")); err == nil {
		rt.CapabilityArgs = map[string]interface{}{
			"portMappings": []map[string]interface{}{
				{"hostPort": port, "containerPort": 80, "protocol": "tcp"},
			},
		}
	}
	ctx := context.Background()
	switch op {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err == nil {
			err = result.Print()
		}
		exitOn(err)
	case "check":
		exitOn(cni.CheckNetworkList(ctx, list, rt))
	case "del":
		exitOn(cni.DelNetworkList(ctx, list, rt))
	default:
		exitOn(fmt.Errorf("unknown operation %q", op))
	}
}

func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
