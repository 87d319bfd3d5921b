package chaos

import (
	"fmt"
	"testing"
	"time"

	"github.com/certfleet/certfleet/events"
)

// The hostile mix is a specification of the decoder as much as of the
// workers: every kind but the exact duplicate must fail events.Decode.
// hostileMix fails the test when one does not; this runs it over every kind
// and every hostile name without the stack.
func TestHostileMixIsRejectedByTheDecoder(t *testing.T) {
	var evs []events.Event
	for i := 0; i < 2*len(hostileNames); i++ {
		ev, err := events.New("//chaos", time.Now(), &events.IssuanceRequest{RequestID: fmt.Sprintf("r%d", i),
			SANs: []string{fmt.Sprintf("j%d.d1-abc.test", i)}, Tenant: tenant, KeyType: events.KeyECDSAP256, CA: caName, Reason: events.ReasonNew})
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	msgs, dead := hostileMix(t, "abc", encodeAll(t, evs), 10)
	if len(msgs) != 11*len(evs) || dead != 9*len(evs) {
		t.Fatalf("%d records, %d to dead-letter; want %d and %d", len(msgs), dead, 11*len(evs), 9*len(evs))
	}
}
