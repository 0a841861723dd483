package main

// The only code here that talks to Podman: its REST API on a unix socket, asked which
// job containers of this instance run and what one container looks like now.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

const (
	apiPrefix = "http://podman/v4.0.0/libpod"
	zeroTime  = "0001-01-01T00:00:00Z"
	// A warm container (services/api/flashpods_api/warm.py) is created before any job
	// claims it; the API hands a claimed one its command as a file in this mount.
	warmLabel          = "flashpods.warm"
	controlInContainer = "/flashpods/control"
	handedOverFile     = "command"
	maxAnswerBytes     = 16 << 20
)

type listedContainer struct {
	ID     string            `json:"Id"`
	Names  []string          `json:"Names"`
	Pid    int               `json:"Pid"`
	State  string            `json:"State"`
	Labels map[string]string `json:"Labels"`
}

type inspected struct {
	ID    string `json:"Id"`
	Name  string `json:"Name"`
	State struct {
		Status     string `json:"Status"`
		Running    bool   `json:"Running"`
		Pid        int    `json:"Pid"`
		FinishedAt string `json:"FinishedAt"`
	} `json:"State"`
	Config struct {
		Labels map[string]string `json:"Labels"`
	} `json:"Config"`
	Mounts []struct {
		Destination string `json:"Destination"`
		Source      string `json:"Source"`
	} `json:"Mounts"`
}

type podmanClient struct {
	http *http.Client
}

func newPodmanClient(socketPath string, timeout time.Duration) *podmanClient {
	dialer := &net.Dialer{}
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socketPath)
		},
		DisableKeepAlives: true,
	}
	return &podmanClient{http: &http.Client{Transport: transport, Timeout: timeout}}
}

// get decodes the JSON answer into out; found is false on 404.
func (c *podmanClient) get(ctx context.Context, path string, out any) (found bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, apiPrefix+path, nil)
	if err != nil {
		return false, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return false, fmt.Errorf("podman %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return false, nil
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("podman %s: HTTP %d", path, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return false, fmt.Errorf("podman %s: %w", path, err)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return false, fmt.Errorf("podman %s: answer is not the expected JSON: %w", path, err)
	}
	return true, nil
}

// runningJobs lists running containers labelled as jobs of this instance.
func (c *podmanClient) runningJobs(ctx context.Context, instance string) ([]listedContainer, error) {
	filters, _ := json.Marshal(map[string][]string{
		"label":  {"flashpods.instance=" + instance, "flashpods.job"},
		"status": {"running"},
	})
	var rows []listedContainer
	if _, err := c.get(ctx, "/containers/json?filters="+url.QueryEscape(string(filters)), &rows); err != nil {
		return nil, err
	}
	return rows, nil
}

// inspect returns nil when the container no longer exists.
func (c *podmanClient) inspect(ctx context.Context, id string) (*inspected, error) {
	var out inspected
	found, err := c.get(ctx, "/containers/"+url.PathEscape(id)+"/json", &out)
	if err != nil || !found {
		return nil, err
	}
	return &out, nil
}

// liveJob: a running container of this instance, labelled and named for job, whose
// init is still pid, that never exited before (a finished job's container started
// again has FinishedAt set), and that a job has claimed.
func liveJob(c *inspected, instance, job string, pid int) bool {
	labels := c.Config.Labels
	switch {
	case !c.State.Running || (c.State.Status != "" && c.State.Status != "running"):
		return false
	case c.State.FinishedAt != "" && c.State.FinishedAt != zeroTime:
		return false
	case labels["flashpods.instance"] != instance || labels["flashpods.job"] != job:
		return false
	case c.Name != job || c.State.Pid != pid:
		return false
	}
	return claimed(c)
}

// claimed is false for a warm container no job has claimed yet. The API hands a
// claimed one its command by writing `command` into the job's control directory
// (owned by the API user, read-only for the container). Its source path comes from
// Podman, not from the container, so a container cannot point it elsewhere.
func claimed(c *inspected) bool {
	if c.Config.Labels[warmLabel] != "1" {
		return true
	}
	for _, m := range c.Mounts {
		if m.Destination == controlInContainer && m.Source != "" {
			st, err := os.Lstat(filepath.Join(m.Source, handedOverFile))
			return err == nil && st.Mode().IsRegular()
		}
	}
	return false
}
