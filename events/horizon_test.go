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
