package events

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCheckHorizon(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	y9999 := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
	for _, tc := range []struct {
		p     Payload
		field string // "" when accepted
	}{
		{&IssuanceRequest{NotBefore: y9999}, "not_before"},
		{&IssuanceRequest{NotBefore: now.Add(MaxNotBeforeAhead + time.Second)}, "not_before"},
		{&IssuanceRequest{NotBefore: now.Add(MaxNotBeforeAhead)}, ""},
		{&IssuanceRequest{}, ""}, // absent: now
		{&IssuanceRequest{NotBefore: now.Add(-time.Hour)}, ""},
		{&IssuanceDeferred{RetryAt: y9999}, "retry_at"},
		{&IssuanceDeferred{RetryAt: now.Add(MaxRetryAhead + time.Second)}, "retry_at"},
		{&IssuanceDeferred{RetryAt: now.Add(7 * 24 * time.Hour)}, ""},
		{&CertFailed{Retryable: true, NextAttemptAt: y9999}, "next_attempt_at"},
		{&CertFailed{Retryable: true, NextAttemptAt: now.Add(MaxRetryAhead)}, ""},
		{&CertFailed{}, ""},
		{&CertObtained{NotBefore: y9999, NotAfter: y9999}, ""}, // the certificate's own dates: not a wait
	} {
		err := CheckHorizon(Event{Data: tc.p}, now)
		if tc.field == "" {
			if err != nil {
				t.Errorf("%T %+v refused: %v", tc.p, tc.p, err)
			}
			continue
		}
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !errors.Is(err, ErrInvalidField) || !strings.Contains(err.Error(), "days after now") {
			t.Errorf("%T %+v: err = %v, want a FieldError for %s", tc.p, tc.p, err, tc.field)
		}
	}
	err := CheckHorizon(Event{Data: &IssuanceDeferred{RetryAt: y9999}}, now)
	if want := "events: retry_at: invalid value: 9999-12-31T23:59:59Z is more than 30 days after now (2026-12-02T10:00:00Z)"; err == nil || err.Error() != want {
		t.Errorf("reason %q, want %q", err, want)
	}
}

// Decode applies the bounds on the wall clock: a request that would hold a
// worker until year 9999, a deferral or retryable failure that would move a
// renewal there, do not decode; the same records a week ahead do.
func TestDecodeRefusesTooFarAhead(t *testing.T) {
	y9999 := time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
	week := time.Now().Add(7 * 24 * time.Hour).UTC().Truncate(time.Second)
	for _, p := range samplePayloads(t) {
		var set func(time.Time)
		var field string
		switch v := p.(type) {
		case *IssuanceRequest:
			set, field = func(at time.Time) { v.NotBefore = at }, "not_before"
		case *IssuanceDeferred:
			set, field = func(at time.Time) { v.RetryAt = at }, "retry_at"
		case *CertFailed:
			set, field = func(at time.Time) { v.NextAttemptAt = at }, "next_attempt_at"
		default:
			continue
		}
		for _, at := range []time.Time{week, y9999} {
			set(at)
			e, err := New("//t", testTime, p)
			if err != nil {
				t.Fatal(err) // Validate does not tell the time: the producer's clock is not the reader's
			}
			m, err := Encode(e)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Decode(m)
			var fe *FieldError
			switch {
			case at.Equal(week) && err != nil:
				t.Errorf("%s a week ahead: %v", field, err)
			case at.Equal(y9999) && (!errors.As(err, &fe) || fe.Field != field || !strings.Contains(err.Error(), "9999-12-31T00:00:00Z is more than")):
				t.Errorf("%s in year 9999: err = %v", field, err)
			}
		}
	}
}
