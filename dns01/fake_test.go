package dns01

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/libdns/libdns"
	"github.com/miekg/dns"
)

// fakeDNS is a small authoritative and recursive server for unit tests: it
// serves the records it holds, chases CNAMEs inside them, answers NXDOMAIN
// with the enclosing zone's SOA, and sets AA on everything.
type fakeDNS struct {
	mu   sync.Mutex
	rrs  []dns.RR
	addr string
	port int
}

func newFakeDNS(t *testing.T, records ...string) *fakeDNS {
	t.Helper()
	f := &fakeDNS{}
	for _, r := range records {
		f.add(t, r)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: f}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	f.addr = pc.LocalAddr().String()
	_, p, _ := net.SplitHostPort(f.addr)
	f.port, _ = strconv.Atoi(p)
	return f
}

func (f *fakeDNS) add(t testing.TB, record string) {
	t.Helper()
	rr, err := dns.NewRR(record)
	if err != nil {
		t.Fatalf("record %q: %v", record, err)
	}
	f.mu.Lock()
	f.rrs = append(f.rrs, rr)
	f.mu.Unlock()
}

func (f *fakeDNS) remove(name string, qtype uint16, txt string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.rrs[:0]
	for _, rr := range f.rrs {
		if strings.EqualFold(rr.Header().Name, name) && rr.Header().Rrtype == qtype {
			if t, ok := rr.(*dns.TXT); !ok || txt == "" || strings.Join(t.Txt, "") == txt {
				continue
			}
		}
		out = append(out, rr)
	}
	f.rrs = out
}

func (f *fakeDNS) lookup(name string, qtype uint16) (ans []dns.RR, exists bool) {
	for _, rr := range f.rrs {
		if !strings.EqualFold(rr.Header().Name, name) {
			continue
		}
		exists = true
		if rr.Header().Rrtype == qtype {
			ans = append(ans, rr)
		}
	}
	return ans, exists
}

func (f *fakeDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	q := r.Question[0]
	name := q.Name
	for range 10 {
		ans, exists := f.lookup(name, q.Qtype)
		if len(ans) > 0 {
			m.Answer = append(m.Answer, ans...)
			break
		}
		if c, _ := f.lookup(name, dns.TypeCNAME); len(c) > 0 && q.Qtype != dns.TypeCNAME {
			m.Answer = append(m.Answer, c[0])
			name = c[0].(*dns.CNAME).Target
			continue
		}
		if !exists && !f.hasBelow(name) {
			m.Rcode = dns.RcodeNameError
		}
		for z := name; ; z = parent(z) {
			if soa, _ := f.lookup(z, dns.TypeSOA); len(soa) > 0 {
				m.Ns = append(m.Ns, soa[0])
				break
			}
			if z == "." {
				break
			}
		}
		break
	}
	_ = w.WriteMsg(m)
}

// hasBelow: an empty non-terminal (names exist below it) is NODATA, not NXDOMAIN.
func (f *fakeDNS) hasBelow(name string) bool {
	for _, rr := range f.rrs {
		if strings.HasSuffix(strings.ToLower(rr.Header().Name), "."+strings.ToLower(name)) {
			return true
		}
	}
	return false
}

// fakeProvider writes TXT records into a fakeDNS (or nowhere, when lost is
// set: a provider that accepts a record no server ever serves).
type fakeProvider struct {
	dns   *fakeDNS
	lost  bool
	err   error
	mu    sync.Mutex
	added []string
}

func (p *fakeProvider) AppendRecords(_ context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	if p.err != nil {
		return nil, p.err
	}
	for _, r := range recs {
		rr := r.RR()
		name := libdns.AbsoluteName(rr.Name, zone)
		p.mu.Lock()
		p.added = append(p.added, name+" "+rr.Data)
		p.mu.Unlock()
		if !p.lost {
			p.dns.add(testingNop{}, name+" 60 IN TXT "+strconv.Quote(rr.Data))
		}
	}
	return recs, nil
}

func (p *fakeProvider) DeleteRecords(_ context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	if p.err != nil {
		return nil, p.err
	}
	for _, r := range recs {
		rr := r.RR()
		p.dns.remove(libdns.AbsoluteName(rr.Name, zone), dns.TypeTXT, rr.Data)
	}
	return recs, nil
}

// testingNop satisfies the Helper/Fatalf that add needs, for records that
// always parse.
type testingNop struct{ testing.TB }

func (testingNop) Helper()               {}
func (testingNop) Fatalf(string, ...any) {}
