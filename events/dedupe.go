package events

// window remembers the last n event ids, evicting the least recently seen.
// Not safe for concurrent use; the subscriber's run loop owns it.
//
// Each sighting appends (id, stamp) to a queue and records the stamp in the
// index; eviction pops the queue's front and forgets the id only when the
// entry is its latest sighting. Entries left behind by later sightings are
// dropped when the queue is compacted. Nothing is allocated per id beyond the
// index's and the queue's amortised growth. While no entry from head on has
// been left behind (the usual case: ids seen once), eviction deletes the
// front's id without looking it up first.
type window struct {
	max   int
	index map[string]uint64 // id -> stamp of its latest sighting
	queue []sighting        // oldest first, from head on
	head  int
	stamp uint64
	stale int // entries from head on that a later sighting left behind
}

type sighting struct {
	id    string
	stamp uint64
}

func newWindow(n int) *window {
	if n <= 0 {
		return &window{max: n}
	}
	return &window{max: n, index: make(map[string]uint64, n), queue: make([]sighting, 0, 2*n)}
}

// Seen reports whether id is in the window, refreshing it if so.
func (w *window) Seen(id string) bool {
	if w.max <= 0 {
		return false
	}
	_, ok := w.index[id]
	if ok {
		w.sight(id)
	}
	return ok
}

// Add records id, evicting the least recently seen id when full.
func (w *window) Add(id string) {
	if w.max <= 0 {
		return
	}
	w.sight(id)
	for len(w.index) > w.max {
		s := w.queue[w.head]
		w.queue[w.head] = sighting{}
		w.head++
		switch {
		case w.stale == 0:
			delete(w.index, s.id) // every entry is its id's latest
		case w.index[s.id] == s.stamp:
			delete(w.index, s.id)
		default:
			w.stale--
		}
	}
}

func (w *window) sight(id string) {
	w.stamp++
	n := len(w.index)
	w.index[id] = w.stamp
	if len(w.index) == n {
		w.stale++ // id was there: its previous entry is left behind
	}
	w.queue = append(w.queue, sighting{id, w.stamp})
	w.compact()
}

// compact drops the popped front and the superseded sightings once the
// queue holds twice as many entries as ids, so it stays within 2n+1.
func (w *window) compact() {
	if len(w.queue)-w.head <= 2*w.max {
		return
	}
	live := w.queue[:0]
	for _, s := range w.queue[w.head:] {
		if w.index[s.id] == s.stamp {
			live = append(live, s)
		}
	}
	clear(w.queue[len(live):])
	w.queue, w.head, w.stale = live, 0, 0
}
