package bus_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/tiercache/tiercache/bus"
)

// ExampleDecode shows a message's round trip: the publishing script joins
// Split's head and body around the sequence number it draws and its clock,
// and every receiver decodes the result.
func ExampleDecode() {
	m := bus.Message{Kind: bus.KindKeys, Origin: bus.NodeID{1}, Groups: []bus.Group{
		{Namespace: "users", Keys: []string{"alice", "bob"}},
	}}
	head, body, err := m.Split()
	if err != nil {
		panic(err)
	}
	// What Redis publishes: head, then the 8-byte big-endian seq, then its
	// clock (TIME, in microseconds) as 8 bytes more, then body.
	sent := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	wire := binary.BigEndian.AppendUint64(head, 42)
	wire = binary.BigEndian.AppendUint64(wire, uint64(sent.UnixMicro()))
	wire = append(wire, body...)

	got, err := bus.Decode(wire)
	if err != nil {
		panic(err)
	}
	fmt.Println(got.Seq, got.SentAt.Format(time.RFC3339), got.Groups)
	// Output: 42 2026-12-06T12:00:00Z [{users [alice bob]}]
}

// ExamplePublisher shows group commit with an ExecFunc that only prints
// what a real one (l2.Store.Apply) would delete and announce atomically.
func ExamplePublisher() {
	exec := func(ctx context.Context, b *bus.Batch) error {
		for _, op := range b.Ops {
			fmt.Printf("delete %s/%s\n", op.Namespace, op.Key)
		}
		fmt.Printf("publish %d+8+%d bytes\n", len(b.Head), len(b.Body))
		return nil
	}
	p, err := bus.NewPublisher(context.Background(), bus.PublisherConfig{Origin: bus.NodeID{1}, Exec: exec})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	if err := p.Publish(context.Background(), bus.Op{Namespace: "users", Key: "alice"}, bus.Op{Namespace: "users", Key: "bob"}); err != nil {
		panic(err)
	}
	// Output:
	// delete users/alice
	// delete users/bob
	// publish 19+8+19 bytes
}
