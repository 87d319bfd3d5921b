package delivery

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/segmentio/kafka-go"

	eventschema "github.com/certfleet/certfleet/schema/events"
)

func TestSuiteIDs(t *testing.T) {
	if id := hpke.DHKEM(ecdh.P256()).ID(); id != KEMID {
		t.Errorf("KEM id %#x, want %#x", id, KEMID)
	}
	if id := hpke.HKDFSHA256().ID(); id != KDFID {
		t.Errorf("KDF id %#x, want %#x", id, KDFID)
	}
	if id := hpke.AES256GCM().ID(); id != AEADID {
		t.Errorf("AEAD id %#x, want %#x", id, AEADID)
	}
}

// Sealed to one key, a delivery opens with that key only, gives back the
// leaf's key, and fails when anything bound into it changes.
func TestSealOpen(t *testing.T) {
	k, other := mustKey(t), mustKey(t)
	c := testCertificate(t, "acme", 24*time.Hour, "a.example.com", "www.a.example.com")
	r, err := Seal("edge", k.Public(), c, ReasonIssued)
	if err != nil {
		t.Fatal(err)
	}
	key, err := Open(k, r)
	if err != nil {
		t.Fatal(err)
	}
	if !publicKeysEqual(c.Key.Public(), key.Public()) {
		t.Fatal("opened another key")
	}
	if r.DeliveryID != DeliveryID(c.Identity, c.Serial, k.Public().KeyID()) {
		t.Error("delivery id is not stable")
	}
	if _, err := Open(other, r); !errors.Is(err, ErrNotOpened) {
		t.Errorf("another key opened it: %v", err)
	}
	forged := r
	forged.RecipientKeyID = other.Public().KeyID()
	if _, err := Open(other, forged); !errors.Is(err, ErrNotOpened) {
		t.Errorf("another key opened it with a forged key id: %v", err)
	}
	c2 := testCertificate(t, "acme", 24*time.Hour, "a.example.com", "www.a.example.com")
	for name, mod := range map[string]func(*Record){
		"another serial":   func(r *Record) { r.Serial = c2.Serial },
		"another chain":    func(r *Record) { r.ChainPEM = c2.ChainPEM },
		"another identity": func(r *Record) { r.Identity = strings.Repeat("0", 64) },
		"ciphertext":       func(r *Record) { r.Ciphertext = append([]byte{r.Ciphertext[0] ^ 1}, r.Ciphertext[1:]...) },
		"enc":              func(r *Record) { r.Enc = append([]byte(nil), c2SealEnc(t, k, c2)...) },
	} {
		t.Run(name, func(t *testing.T) {
			bad := r
			bad.Enc, bad.Ciphertext = append([]byte(nil), r.Enc...), append([]byte(nil), r.Ciphertext...)
			mod(&bad)
			if _, err := Open(k, bad); err == nil {
				t.Fatal("opened a record whose bound data changed")
			}
		})
	}
}

func c2SealEnc(t *testing.T, k *PrivateKey, c Certificate) []byte {
	r, err := Seal("edge", k.Public(), c, ReasonIssued)
	if err != nil {
		t.Fatal(err)
	}
	return r.Enc
}

func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	b, err := eventschema.FS.ReadFile("v1/key.delivered.json")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource(SchemaURI, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(SchemaURI)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Encode writes what the published schema accepts and Decode reads back;
// Decode is strict.
func TestEncodeDecode(t *testing.T) {
	k := mustKey(t)
	schema := compileSchema(t)
	for _, tc := range []struct {
		tenant string
		sans   []string
	}{{"acme", []string{"a.example.com"}}, {"", []string{"*.b.example.com", "b.example.com"}}} {
		c := testCertificate(t, tc.tenant, 24*time.Hour, tc.sans...)
		r, err := Seal("edge-1", k.Public(), c, ReasonRecipientAdded)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Encode(r, Source, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(m.Value))
		if err != nil {
			t.Fatal(err)
		}
		if err := schema.Validate(inst); err != nil {
			t.Fatalf("the schema refuses an encoded record: %v", err)
		}
		if bytes.Contains(m.Value, []byte("PRIVATE KEY")) || string(m.Key) != c.Identity+"/"+k.Public().KeyID() || Header(m, HeaderRecipientKeyID) != k.Public().KeyID() {
			t.Fatalf("record key %q, headers %v", m.Key, m.Headers)
		}
		got, err := Decode(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Open(k, got); err != nil {
			t.Fatalf("a decoded record does not open: %v", err)
		}
	}

	c := testCertificate(t, "acme", 24*time.Hour, "a.example.com")
	r, _ := Seal("edge-1", k.Public(), c, ReasonIssued)
	good, _ := Encode(r, Source, time.Now())
	setHeader := func(m kafka.Message, key, v string) kafka.Message {
		m.Headers = append([]kafka.Header(nil), m.Headers...)
		for i := range m.Headers {
			if m.Headers[i].Key == key {
				m.Headers[i].Value = []byte(v)
			}
		}
		return m
	}
	withValue := func(mod func(map[string]any)) kafka.Message {
		var v map[string]any
		_ = json.Unmarshal(good.Value, &v)
		mod(v)
		m := good
		m.Value, _ = json.Marshal(v)
		return m
	}
	for name, tc := range map[string]struct {
		m    kafka.Message
		want error
	}{
		"an events record":    {setHeader(good, "ce_type", "dev.certfleet.cert.obtained"), ErrNotDelivery},
		"version 2":           {setHeader(good, "ce_dataschema", strings.Replace(SchemaURI, "/v1/", "/v2/", 1)), ErrUnknownVersion},
		"spec version":        {setHeader(good, "ce_specversion", "0.3"), ErrUnknownVersion},
		"unknown field":       {withValue(func(v map[string]any) { v["private_key"] = "x" }), ErrInvalid},
		"another suite":       {withValue(func(v map[string]any) { v["aead_id"] = 3 }), ErrUnknownVersion},
		"key not identity/id": {func() kafka.Message { m := good; m.Key = []byte("x"); return m }(), ErrInvalid},
		"sans not the leaf":   {withValue(func(v map[string]any) { v["sans"] = []string{"b.example.com"} }), ErrInvalid},
		"bad recipient":       {withValue(func(v map[string]any) { v["recipient"] = "Edge 1" }), ErrInvalid},
		"short enc":           {withValue(func(v map[string]any) { v["enc"] = "AAAA" }), ErrInvalid},
		"header key id lies":  {setHeader(good, HeaderRecipientKeyID, strings.Repeat("a", 64)), ErrInvalid},
	} {
		if _, err := Decode(tc.m); !errors.Is(err, tc.want) {
			t.Errorf("%s: Decode = %v, want %v", name, err, tc.want)
		}
	}
}

func TestKeyFiles(t *testing.T) {
	k := mustKey(t)
	priv, err := MarshalPrivateKeyPEM(k)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := MarshalPublicKeyPEM(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	k2, err := ParsePrivateKeyPEM(priv)
	if err != nil || k2.Public().KeyID() != k.Public().KeyID() {
		t.Fatalf("private key round trip: %v", err)
	}
	p2, err := ParsePublicKeyPEM(pub)
	if err != nil || p2.KeyID() != k.Public().KeyID() {
		t.Fatalf("public key round trip: %v", err)
	}
	if _, err := ParsePublicKeyPEM(priv); err == nil || !strings.Contains(err.Error(), "private key") {
		t.Errorf("a private key passed as the public key: %v", err)
	}
	if s := fmt.Sprintf("%v %+v %#v", k, k, k); strings.Contains(s, string(priv)) || strings.Contains(s, "PRIVATE") {
		t.Errorf("the key prints its material: %s", s)
	}
	der, _ := x509.MarshalPKIXPublicKey(testCertificate(t, "", time.Hour, "a.example.com").Key.Public())
	if _, err := ParsePublicKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})); err != nil {
		t.Errorf("an ECDSA P-256 SubjectPublicKeyInfo is a P-256 point: %v", err)
	}
}

func TestMatches(t *testing.T) {
	r := Recipient{Tenants: []string{"eu"}, SANsPatterns: []string{"*.shop.example", "api.example.com"}}
	for _, tc := range []struct {
		tenant string
		sans   []string
		want   bool
	}{
		{"eu", []string{"shop.example"}, true},
		{"eu", []string{"a.shop.example", "*.b.shop.example", "api.example.com"}, true},
		{"eu", []string{"a.shop.example", "other.example.com"}, false}, // every SAN must match
		{"us", []string{"a.shop.example"}, false},
		{"eu", []string{"xshop.example"}, false},
		{"eu", []string{"www.api.example.com"}, false},
	} {
		if got := r.Matches(tc.tenant, tc.sans); got != tc.want {
			t.Errorf("Matches(%s, %v) = %v", tc.tenant, tc.sans, got)
		}
	}
	if !(Recipient{Tenants: []string{"eu"}}).Matches("eu", []string{"any.example.org"}) {
		t.Error("a tenant-only recipient takes any names of its tenant")
	}
	if !(Recipient{SANsPatterns: []string{"*.example.org"}}).Matches("any", []string{"a.example.org"}) {
		t.Error("a pattern-only recipient takes any tenant")
	}
}

func TestRecipientCheck(t *testing.T) {
	k := mustKey(t).Public()
	for _, tc := range []struct {
		r     Recipient
		field string
	}{
		{Recipient{Name: "edge-1", Key: k, Tenants: []string{"eu"}}, ""},
		{Recipient{Name: "Edge", Key: k, Tenants: []string{"eu"}}, "name"},
		{Recipient{Name: "edge", Tenants: []string{"eu"}}, "public_key"},
		{Recipient{Name: "edge", Key: k}, "scope"},
		{Recipient{Name: "edge", Key: k, SANsPatterns: []string{"*.com"}}, "sans_patterns"},
		{Recipient{Name: "edge", Key: k, SANsPatterns: []string{"A.example.com"}}, "sans_patterns"},
		{Recipient{Name: "edge", Key: k, Tenants: []string{"a b"}}, "tenants"},
	} {
		err := tc.r.Check()
		var fe *FieldError
		if tc.field == "" && err != nil || tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field) {
			t.Errorf("Check(%+v) = %v, want field %q", tc.r, err, tc.field)
		}
	}
}

// memWriter keeps records; fail makes writes fail.
type memWriter struct {
	mu   sync.Mutex
	msgs []kafka.Message
	fail error
}

func (w *memWriter) WriteMessages(_ context.Context, msgs ...kafka.Message) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fail != nil {
		return w.fail
	}
	w.msgs = append(w.msgs, msgs...)
	return nil
}

type fixedRecipients []Recipient

func (f fixedRecipients) List(context.Context) ([]Recipient, error) { return f, nil }

// The Deliverer seals to each matching recipient, in one write, and to no
// other; a failed write is the caller's to retry.
func TestDeliverer(t *testing.T) {
	eu, us, names := mustKey(t), mustKey(t), mustKey(t)
	rs := fixedRecipients{
		{Name: "eu", Key: eu.Public(), Tenants: []string{"eu"}},
		{Name: "us", Key: us.Public(), Tenants: []string{"us"}},
		{Name: "shop", Key: names.Public(), SANsPatterns: []string{"*.shop.example"}},
	}
	w := &memWriter{}
	d := &Deliverer{Recipients: rs, Writer: w, Topic: "deliveries.t", Metrics: NewMetrics(nil)}
	c := testCertificate(t, "eu", time.Hour, "a.shop.example")
	if err := d.Deliver(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, m := range w.msgs {
		r, err := Decode(m)
		if err != nil || m.Topic != "deliveries.t" {
			t.Fatalf("record on %s: %v", m.Topic, err)
		}
		got[r.Recipient] = true
		if _, err := Open(us, r); err == nil {
			t.Error("us opened a delivery not for it")
		}
	}
	if len(w.msgs) != 2 || !got["eu"] || !got["shop"] {
		t.Errorf("delivered to %v, want eu and shop", got)
	}
	w.fail = errors.New("broker down")
	if err := d.Deliver(context.Background(), c); err == nil {
		t.Error("a failed write reported delivered")
	}
}
