package redistest

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// numSlots is the number of hash slots of every Redis Cluster.
const numSlots = 16384

// clusterView is one member's picture of the cluster, parsed from its
// CLUSTER NODES reply.
type clusterView struct {
	nodes []viewNode // sorted by id
	raw   string
}

// viewNode is one line of CLUSTER NODES.
type viewNode struct {
	id       string
	addr     string   // "127.0.0.1:PORT", without the bus port
	flags    []string // sorted, without "myself" and "fail?" (a local suspicion)
	myself   bool
	master   string // the master's id for a replica, "-" for a master
	slots    [][2]int
	pending  []string // "[slot->-id]" and "[slot-<-id]": a migration in progress, shown on the reporting member's own line
	isMaster bool
	isFailed bool
}

// parseClusterNodes parses a CLUSTER NODES reply.
func parseClusterNodes(raw string) (*clusterView, error) {
	v := &clusterView{raw: raw}
	for line := range strings.SplitSeq(strings.TrimSpace(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			return nil, fmt.Errorf("short CLUSTER NODES line %q", line)
		}
		addr, _, _ := strings.Cut(f[1], "@")
		n := viewNode{id: f[0], addr: addr, master: f[3]}
		for flag := range strings.SplitSeq(f[2], ",") {
			switch flag {
			case "myself":
				n.myself = true
			case "fail?", "noflags":
			default:
				n.flags = append(n.flags, flag)
			}
			n.isMaster = n.isMaster || flag == "master"
			n.isFailed = n.isFailed || flag == "fail"
		}
		slices.Sort(n.flags)
		for _, tok := range f[8:] {
			if strings.HasPrefix(tok, "[") {
				n.pending = append(n.pending, tok)
				continue
			}
			lo, hi, isRange := strings.Cut(tok, "-")
			a, err := strconv.Atoi(lo)
			if err != nil {
				return nil, fmt.Errorf("bad slot %q in line %q", tok, line)
			}
			b := a
			if isRange {
				if b, err = strconv.Atoi(hi); err != nil {
					return nil, fmt.Errorf("bad slot range %q in line %q", tok, line)
				}
			}
			n.slots = append(n.slots, [2]int{a, b})
		}
		v.nodes = append(v.nodes, n)
	}
	slices.SortFunc(v.nodes, func(a, b viewNode) int { return strings.Compare(a.id, b.id) })
	return v, nil
}

// key is the part of the view every member must share once the cluster has
// settled: who is who, who serves which slots, who failed, and any slot
// migration still marked as in progress. Ping times, link states and
// epochs are left out.
func (v *clusterView) key() string {
	var b strings.Builder
	for _, n := range v.nodes {
		fmt.Fprintf(&b, "%s %s %s %s %v %v\n", n.id, n.addr, strings.Join(n.flags, ","), n.master, n.slots, n.pending)
	}
	return b.String()
}

// node returns the line of node id, or nil.
func (v *clusterView) node(id string) *viewNode {
	for i := range v.nodes {
		if v.nodes[i].id == id {
			return &v.nodes[i]
		}
	}
	return nil
}

// owner returns the id of the master serving slot, or "".
func (v *clusterView) owner(slot int) string {
	for _, n := range v.nodes {
		if n.isMaster && n.serves(slot) {
			return n.id
		}
	}
	return ""
}

// replicasOf returns the ids of the replicas of master id that are not
// marked as failed.
func (v *clusterView) replicasOf(id string) []string {
	var out []string
	for _, n := range v.nodes {
		if !n.isMaster && n.master == id && !n.isFailed {
			out = append(out, n.id)
		}
	}
	return out
}

// serves reports whether n serves slot.
func (n *viewNode) serves(slot int) bool {
	for _, r := range n.slots {
		if r[0] <= slot && slot <= r[1] {
			return true
		}
	}
	return false
}

// firstSlot is the lowest slot n serves, or numSlots when it serves none.
func (n *viewNode) firstSlot() int {
	first := numSlots
	for _, r := range n.slots {
		first = min(first, r[0])
	}
	return first
}
