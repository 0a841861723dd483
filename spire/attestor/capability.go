package main

// Reading /proc/<pid>/ns/pid of a process that runs as another uid (job processes run
// as the job user and its subordinate uids) needs CAP_SYS_PTRACE. Without it every
// read fails and no job would ever be attested: refuse to start instead, saying what
// to grant.

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

const capSysPtrace = 19

// hasCapSysPtrace reads the effective capability set from <procRoot>/self/status.
func hasCapSysPtrace(procRoot string) (bool, error) {
	fh, err := os.Open(filepath.Join(procRoot, "self", "status"))
	if err != nil {
		return false, err
	}
	defer fh.Close()
	scanner := bufio.NewScanner(fh)
	for scanner.Scan() {
		if rest, ok := strings.CutPrefix(scanner.Text(), "CapEff:"); ok {
			bits, err := strconv.ParseUint(strings.TrimSpace(rest), 16, 64)
			if err != nil {
				return false, fmt.Errorf("CapEff %q: %w", rest, err)
			}
			return bits>>capSysPtrace&1 == 1, nil
		}
	}
	return false, fmt.Errorf("no CapEff line in %s/self/status", procRoot)
}

// checkCanReadJobNamespaces returns nil when this process can read job processes'
// namespaces: as root, with CAP_SYS_PTRACE, or as the uid that owns the Podman socket
// (the job user itself, e.g. a non-root development setup).
func checkCanReadJobNamespaces(procRoot, podmanSocket string) error {
	euid := os.Geteuid()
	if euid == 0 {
		return nil
	}
	ok, err := hasCapSysPtrace(procRoot)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	if st, err := os.Stat(podmanSocket); err == nil {
		if sys, isUnix := st.Sys().(*syscall.Stat_t); isUnix && int(sys.Uid) == euid {
			return nil
		}
	}
	return fmt.Errorf("flashpods: spire-agent needs CAP_SYS_PTRACE to read the PID namespace " +
		"of job processes (they run as another uid): grant it, e.g. " +
		"AmbientCapabilities=CAP_SYS_PTRACE or `setpriv --inh-caps=+sys_ptrace " +
		"--ambient-caps=+sys_ptrace`")
}
