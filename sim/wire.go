package sim

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/tiercache/tiercache/tier"
)

// The pipes between a run's parent and its node processes (Config.Procs)
// carry frames: a type byte, the payload's length as a uvarint, the
// payload. Records (reads, writes) and calls are varint-packed; the rare
// control frames are JSON.

// Frame types.
const (
	// Parent to node.
	fSpec  byte = 'S' // JSON nodeSpec: the node to open
	fGo    byte = 'G' // varint: the run's origin on CLOCK_MONOTONIC; start the workers
	fReply byte = 'P' // uvarint call ID, status byte, uvarint count, count varints
	fPause byte = 'Z' // JSON pauseOrder: read keys into L1, then watch for the resume
	fDo    byte = 'D' // JSON writeOrder: write keys now
	fStop  byte = 'X' // stop the workers, report, exit

	// Node to parent.
	fReady   byte = 'r' // the node is up
	fCall    byte = 'c' // uvarint call ID, call byte, uvarint count, count uvarint keys
	fRead    byte = 'd' // a read record
	fWrite   byte = 'w' // a write record
	fOp      byte = 'o' // uvarint worker: it finished an operation
	fIdle    byte = 'i' // every worker finished its share of Config.Ops
	fPrimed  byte = 'z' // JSON primed: the keys now in L1; watching for the resume
	fResumed byte = 'u' // JSON resumed: the reads begun the moment it resumed
	fDone    byte = 'e' // JSON writeDone: the ordered writes returned
	fStats   byte = 's' // JSON FleetStats
)

// Calls of a node process to its parent, and the statuses of replies.
const (
	callFetch     byte = 'f' // one key: version
	callFetchMany byte = 'm' // keys: versions
	callBegin     byte = 'b' // keys: row locks taken, new versions
	callEnd       byte = 'e' // keys: row locks released (no reply)

	statusOK       byte = 0
	statusNotFound byte = 1 // the key is absent (Config.Absent)
	statusFailed   byte = 2 // the fetch failed: the fetch-error fault, or the run's end
)

// maxFrame bounds a frame's payload: a corrupt length never allocates much.
const maxFrame = 1 << 20

var errFrame = errors.New("sim: malformed frame")

// appendFrame appends a frame of type t with payload p to b.
func appendFrame(b []byte, t byte, p []byte) []byte {
	b = append(b, t)
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

// readFrame reads one frame into *buf (grown as needed): its payload is
// valid until the next call with the same buf.
func readFrame(r *bufio.Reader, buf *[]byte) (t byte, p []byte, err error) {
	t, err = r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, nil, unexpected(err)
	}
	if n > maxFrame {
		return 0, nil, fmt.Errorf("%w: %d bytes", errFrame, n)
	}
	if uint64(cap(*buf)) < n {
		*buf = make([]byte, n)
	}
	p = (*buf)[:n]
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, unexpected(err)
	}
	return t, p, nil
}

// frameWriter writes frames to a pipe for several goroutines. Records
// are buffered and flushed by flushLoop every flushEvery; everything else
// is flushed at once.
type frameWriter struct {
	mu    sync.Mutex
	w     *bufio.Writer
	p     []byte // scratch payload
	f     []byte // scratch frame
	dirty bool
	err   error
}

// flushEvery is how long a record may wait in a node process's buffer:
// what a killed node had not flushed is lost with it, as if its
// operations had never returned.
const flushEvery = 2 * time.Millisecond

func newFrameWriter(w io.Writer) *frameWriter {
	return &frameWriter{w: bufio.NewWriterSize(w, 64<<10)}
}

// send writes a frame of type t whose payload payload appends, flushing
// it now if flush is set. It returns the pipe's first error.
func (fw *frameWriter) send(t byte, flush bool, payload func([]byte) []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.err != nil {
		return fw.err
	}
	fw.p = fw.p[:0]
	if payload != nil {
		fw.p = payload(fw.p)
	}
	fw.f = appendFrame(fw.f[:0], t, fw.p)
	if _, fw.err = fw.w.Write(fw.f); fw.err != nil {
		return fw.err
	}
	if flush {
		fw.err, fw.dirty = fw.w.Flush(), false
	} else {
		fw.dirty = true
	}
	return fw.err
}

// sendJSON writes a frame of type t whose payload is v in JSON, now.
func (fw *frameWriter) sendJSON(t byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return fw.send(t, true, func(p []byte) []byte { return append(p, b...) })
}

// flush writes out what is buffered.
func (fw *frameWriter) flush() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.err == nil && fw.dirty {
		fw.err, fw.dirty = fw.w.Flush(), false
	}
	return fw.err
}

// flushLoop flushes every flushEvery until stop is closed.
func (fw *frameWriter) flushLoop(stop <-chan struct{}) {
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			_ = fw.flush()
		case <-stop:
			return
		}
	}
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Read flags.
const (
	rdShared byte = 1 << iota
	rdMany
	rdNotFound
	rdPermitted
	rdErr
	rdWrongKey
)

// appendOp appends what reads and writes share: when the operation ran,
// the version, the key, and the node (and which incarnation of it).
func appendOp(b []byte, start, end, version int64, key int32, node int16, inc uint16) []byte {
	b = binary.AppendVarint(b, start)
	b = binary.AppendVarint(b, end)
	b = binary.AppendVarint(b, version)
	b = binary.AppendUvarint(b, uint64(uint32(key)))
	b = binary.AppendUvarint(b, uint64(uint16(node)))
	return binary.AppendUvarint(b, uint64(inc))
}

// op takes what appendOp appended.
func (d *decoder) op() (start, end, version int64, key int32, node int16, inc uint16) {
	start, end, version = d.varint(), d.varint(), d.varint()
	key = int32(d.uvarint(1<<31 - 1))
	node = int16(d.uvarint(1<<15 - 1))
	inc = uint16(d.uvarint(1<<16 - 1))
	return start, end, version, key, node, inc
}

func appendRead(b []byte, rd read) []byte {
	b = appendOp(b, rd.Start, rd.End, rd.Version, rd.Key, rd.Node, rd.Inc)
	b = binary.AppendUvarint(b, uint64(uint32(rd.Worker)))
	var f byte
	for _, x := range []struct {
		on   bool
		flag byte
	}{{rd.Shared, rdShared}, {rd.Many, rdMany}, {rd.NotFound, rdNotFound}, {rd.Permitted, rdPermitted}, {rd.Err, rdErr}, {rd.WrongKey, rdWrongKey}} {
		if x.on {
			f |= x.flag
		}
	}
	return append(b, byte(rd.Source), f)
}

// decoder takes varints off a payload, remembering the first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uvarint(limit uint64) uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 || v > limit {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if len(d.b) == 0 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errFrame
	}
	d.b = nil
}

// done reports the first error, or one if bytes are left over.
func (d *decoder) done() error {
	if d.err == nil && len(d.b) > 0 {
		return fmt.Errorf("%w: %d trailing bytes", errFrame, len(d.b))
	}
	return d.err
}

func decodeRead(p []byte) (read, error) {
	d := decoder{b: p}
	var rd read
	rd.Start, rd.End, rd.Version, rd.Key, rd.Node, rd.Inc = d.op()
	rd.Worker = int32(d.uvarint(1<<31 - 1))
	rd.Source = tier.Source(d.byte())
	f := d.byte()
	rd.Shared, rd.Many, rd.NotFound = f&rdShared != 0, f&rdMany != 0, f&rdNotFound != 0
	rd.Permitted, rd.Err, rd.WrongKey = f&rdPermitted != 0, f&rdErr != 0, f&rdWrongKey != 0
	return rd, d.done()
}

func appendWrite(b []byte, w write) []byte {
	b = appendOp(b, w.Start, w.End, w.Version, w.Key, w.Node, w.Inc)
	return append(b, byte(w.Outcome), byte(w.Kind))
}

func decodeWrite(p []byte) (write, error) {
	d := decoder{b: p}
	var w write
	w.Start, w.End, w.Version, w.Key, w.Node, w.Inc = d.op()
	w.Outcome, w.Kind = outcome(d.byte()), writeKind(d.byte())
	if err := d.done(); err != nil {
		return write{}, err
	}
	if w.Outcome > wroteFailed || w.Kind > byGroup {
		return write{}, fmt.Errorf("%w: outcome %d, kind %d", errFrame, w.Outcome, w.Kind)
	}
	return w, nil
}

// appendCall appends a call's payload: its ID, what it asks, its keys.
func appendCall(b []byte, id uint64, call byte, keys []int) []byte {
	b = binary.AppendUvarint(b, id)
	b = append(b, call)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(k))
	}
	return b
}

// decodeCall reads a call's payload; keys must be below keySpace.
func decodeCall(p []byte, keySpace int) (id uint64, call byte, keys []int, err error) {
	d := decoder{b: p}
	id, call = d.uvarint(1<<63), d.byte()
	n := d.uvarint(uint64(len(p)))
	for range n {
		if d.err != nil {
			break
		}
		keys = append(keys, int(d.uvarint(uint64(keySpace-1))))
	}
	if err := d.done(); err != nil {
		return 0, 0, nil, err
	}
	return id, call, keys, nil
}

// appendReply appends a reply's payload: the call's ID, a status, values.
func appendReply(b []byte, id uint64, status byte, vs []int64) []byte {
	b = binary.AppendUvarint(b, id)
	b = append(b, status)
	b = binary.AppendUvarint(b, uint64(len(vs)))
	for _, v := range vs {
		b = binary.AppendVarint(b, v)
	}
	return b
}

func decodeReply(p []byte) (id uint64, status byte, vs []int64, err error) {
	d := decoder{b: p}
	id, status = d.uvarint(1<<63), d.byte()
	n := d.uvarint(uint64(len(p)))
	for range n {
		if d.err != nil {
			break
		}
		vs = append(vs, d.varint())
	}
	if err := d.done(); err != nil {
		return 0, 0, nil, err
	}
	return id, status, vs, nil
}
