package bus_test

import (
	"testing"
	"time"

	"github.com/tiercache/tiercache/bus"
)

// TestClockSampleSince proves Since reads Redis's clock at the middle of
// the sample's round trip: a message Redis stamped at the sample's TIME,
// received 30ms after a 10ms round trip ended, is 35ms old.
func TestClockSampleSince(t *testing.T) {
	start := time.Now()
	redisNow := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	c := bus.ClockSample{Redis: redisNow, Start: start, End: start.Add(10 * time.Millisecond)}
	now := c.End.Add(30 * time.Millisecond)
	if got, want := c.Since(redisNow, now), 35*time.Millisecond; got != want {
		t.Fatalf("Since = %v, want %v", got, want)
	}
	// A message stamped 100ms before the sample's TIME.
	if got, want := c.Since(redisNow.Add(-100*time.Millisecond), now), 135*time.Millisecond; got != want {
		t.Fatalf("Since of an older stamp = %v, want %v", got, want)
	}
}

// TestSubscriberSamplesRedisClock proves the subscriber's sample brackets
// Redis's TIME between its Start and End, so that Since of a message just
// published is small and never negative by more than the round trip.
func TestSubscriberSamplesRedisClock(t *testing.T) {
	f := startSub(t, subOpts{})
	f.renewed(t, 0)
	c, ok := f.sub.RedisClock()
	if !ok {
		t.Fatal("no clock sample after a renewal")
	}
	if c.End.Before(c.Start) || c.Redis.IsZero() {
		t.Fatalf("sample %+v: want Start <= End and a Redis time", c)
	}
	s1 := f.publishKeys(t, other, "ns", "k")
	_, e := f.rec.waitFor(t, 0, "Apply of the message", isApply(s1))
	if e.msg.SentAt.IsZero() {
		t.Fatal("the message carries no clock")
	}
	if d := c.Since(e.msg.SentAt, time.Now()); d < -c.End.Sub(c.Start) {
		t.Fatalf("delay %v of a delivered message is negative beyond the round trip %v", d, c.End.Sub(c.Start))
	}
}
