package clock

import (
	"context"
	"sync"
	"testing"
	"time"
)

func TestOrDefaultsToTheWallClock(t *testing.T) {
	before := time.Now()
	got := Or(nil).Now()
	if got.Before(before) || got.After(time.Now()) {
		t.Errorf("Or(nil).Now() = %v, not the wall clock", got)
	}
	f := NewFake(time.Unix(0, 0))
	if Or(f) != Clock(f) {
		t.Error("Or(c) did not return c")
	}
}

func TestFakeMovesOnlyWhenTold(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	f := NewFake(t0)
	if !f.Now().Equal(t0) {
		t.Fatalf("Now = %v, want %v", f.Now(), t0)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() { defer wg.Done(); f.Advance(time.Second); _ = f.Now() }()
	}
	wg.Wait()
	if want := t0.Add(10 * time.Second); !f.Now().Equal(want) {
		t.Errorf("after 10 concurrent Advance(1s): %v, want %v", f.Now(), want)
	}
	f.Set(t0)
	if !f.Now().Equal(t0) {
		t.Errorf("Set: %v", f.Now())
	}
}

func TestSleep(t *testing.T) {
	start := time.Now()
	if err := Sleep(context.Background(), 20*time.Millisecond); err != nil || time.Since(start) < 20*time.Millisecond {
		t.Fatalf("Sleep returned %v after %v", err, time.Since(start))
	}
	if err := Sleep(context.Background(), -time.Second); err != nil {
		t.Fatalf("negative wait: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(10*time.Millisecond, cancel)
	start = time.Now()
	if err := Sleep(ctx, time.Minute); err != context.Canceled || time.Since(start) > 5*time.Second {
		t.Fatalf("cancelled Sleep returned %v after %v", err, time.Since(start))
	}
}
