package testenv

import (
	"fmt"
	"sync"
	"testing"
)

func TestLogBufferConcurrentTail(t *testing.T) {
	var l LogBuffer
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				fmt.Fprintf(&l, "line %d\n", i)
				_ = l.Tail(3)
			}
		}()
	}
	wg.Wait()
	if got := Tail("a\nb\nc\n", 2); got != "b\nc" {
		t.Errorf("Tail = %q", got)
	}
	if got := Tail("a", 5); got != "a" {
		t.Errorf("Tail of a short text = %q", got)
	}
}
