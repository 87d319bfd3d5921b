package events

import "container/list"

// window remembers the last n event ids, evicting the least recently seen.
// Not safe for concurrent use; the subscriber's run loop owns it.
type window struct {
	max   int
	order *list.List // front = most recent
	index map[string]*list.Element
}

func newWindow(n int) *window {
	return &window{max: n, order: list.New(), index: make(map[string]*list.Element, n)}
}

// Seen reports whether id is in the window, refreshing it if so.
func (w *window) Seen(id string) bool {
	if w.max <= 0 {
		return false
	}
	el, ok := w.index[id]
	if ok {
		w.order.MoveToFront(el)
	}
	return ok
}

// Add records id, evicting the oldest id when full.
func (w *window) Add(id string) {
	if w.max <= 0 {
		return
	}
	if el, ok := w.index[id]; ok {
		w.order.MoveToFront(el)
		return
	}
	w.index[id] = w.order.PushFront(id)
	if w.order.Len() > w.max {
		oldest := w.order.Back()
		w.order.Remove(oldest)
		delete(w.index, oldest.Value.(string))
	}
}
