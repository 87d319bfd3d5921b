package events

import "hash/maphash"

// window remembers the last n event ids, evicting the least recently seen.
// Not safe for concurrent use; the subscriber's run loop owns it.
//
// The ids live in a slab of at most n entries, linked in the order they were
// last seen (by index, oldest at head). An open-addressing table (linear
// probing, at least 2n slots, so at most half full) finds an id's entry: a
// slot holds the upper 32 bits of the id's hash, whose low bits are also its
// home slot, and the entry's index. A probe thus reads one table line and
// compares the id itself only where those 32 bits match: an id is reported
// seen only when it equals a remembered one. A full window reuses its oldest
// entry for a new id, so nothing is allocated once n ids have been seen, and
// the table holds no pointers for the garbage collector to scan.
type window struct {
	max        int
	seed       maphash.Seed
	hash       func(maphash.Seed, string) uint64 // maphash.String; tests use a weak one
	slots      []uint64                          // tag<<32 | index+1; 0 is empty
	mask       uint64
	ents       []windowEntry
	head, tail int32 // least and most recently seen entry; -1 when empty
}

type windowEntry struct {
	id         string
	tag        uint32 // upper 32 bits of the id's hash
	prev, next int32  // neighbours in recency order; -1 at the ends
}

// maxWindow bounds the window so an entry's index and home slot fit a slot
// (a billion ids would take tens of GiB anyway).
const maxWindow = 1 << 30

func newWindow(n int) *window {
	if n <= 0 {
		return &window{max: n}
	}
	n = min(n, maxWindow)
	size := 2
	for size < 2*n {
		size *= 2
	}
	return &window{
		max: n, seed: maphash.MakeSeed(), hash: maphash.String,
		slots: make([]uint64, size), mask: uint64(size - 1),
		ents: make([]windowEntry, 0, n), head: -1, tail: -1,
	}
}

// Seen reports whether id is in the window, refreshing it if so.
func (w *window) Seen(id string) bool {
	if w.max <= 0 {
		return false
	}
	_, i := w.find(id, w.tagOf(id))
	if i < 0 {
		return false
	}
	w.touch(i)
	return true
}

// Add records id, evicting the least recently seen id when full.
func (w *window) Add(id string) {
	if w.max <= 0 {
		return
	}
	tag := w.tagOf(id)
	slot, i := w.find(id, tag)
	if i >= 0 {
		w.touch(i)
		return
	}
	if len(w.ents) < w.max {
		i = int32(len(w.ents))
		w.ents = append(w.ents, windowEntry{})
	} else {
		// Reuse the oldest entry; its slot goes, which may move others, so
		// the new id's slot is looked for again.
		i = w.head
		w.deleteSlot(w.slotOf(i))
		w.unlink(i)
		slot, _ = w.find(id, tag)
	}
	w.ents[i] = windowEntry{id: id, tag: tag}
	w.slots[slot] = uint64(tag)<<32 | uint64(i+1)
	w.pushTail(i)
}

func (w *window) tagOf(id string) uint32 { return uint32(w.hash(w.seed, id) >> 32) }

// find returns the slot holding id and its entry's index, or the empty slot
// where it would go and -1.
func (w *window) find(id string, tag uint32) (uint64, int32) {
	for s := uint64(tag) & w.mask; ; s = (s + 1) & w.mask {
		v := w.slots[s]
		if v == 0 {
			return s, -1
		}
		if uint32(v>>32) == tag {
			if i := int32(uint32(v)) - 1; w.ents[i].id == id {
				return s, i
			}
		}
	}
}

// slotOf returns the slot of entry i.
func (w *window) slotOf(i int32) uint64 {
	for s := uint64(w.ents[i].tag) & w.mask; ; s = (s + 1) & w.mask {
		if uint32(w.slots[s]) == uint32(i+1) {
			return s
		}
	}
}

// deleteSlot empties slot s and moves back the slots after it that could
// not be found past the hole (linear probing without tombstones).
func (w *window) deleteSlot(s uint64) {
	for {
		w.slots[s] = 0
		j := s
		for {
			j = (j + 1) & w.mask
			v := w.slots[j]
			if v == 0 {
				return
			}
			home := (v >> 32) & w.mask
			// v stays if its home lies cyclically in (s, j].
			if (j-home)&w.mask >= (j-s)&w.mask {
				w.slots[s] = v
				s = j
				break
			}
		}
	}
}

func (w *window) touch(i int32) {
	if i != w.tail {
		w.unlink(i)
		w.pushTail(i)
	}
}

func (w *window) unlink(i int32) {
	e := &w.ents[i]
	if e.prev >= 0 {
		w.ents[e.prev].next = e.next
	} else {
		w.head = e.next
	}
	if e.next >= 0 {
		w.ents[e.next].prev = e.prev
	} else {
		w.tail = e.prev
	}
}

func (w *window) pushTail(i int32) {
	e := &w.ents[i]
	e.prev, e.next = w.tail, -1
	if w.tail >= 0 {
		w.ents[w.tail].next = i
	} else {
		w.head = i
	}
	w.tail = i
}
