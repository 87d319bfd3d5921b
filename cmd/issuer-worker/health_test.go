package main

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

type stalledFunc func(time.Duration) error

func (f stalledFunc) Stalled(p time.Duration) error { return f(p) }

// /healthz answers 503 with the stall's description while the worker is
// stalled, ok otherwise, and never asks when the check is off.
func TestHealthz(t *testing.T) {
	stuck := stalledFunc(func(p time.Duration) error {
		if p != 15*time.Minute {
			t.Errorf("patience %v; want the configured 15m", p)
		}
		return errors.New("stalled: 3 record(s) due")
	})
	moving := stalledFunc(func(time.Duration) error { return nil })
	for _, tc := range []struct {
		name     string
		w        Stalled
		patience time.Duration
		code     int
		body     string
	}{
		{"moving", moving, 15 * time.Minute, http.StatusOK, "ok\n"},
		{"stalled", stuck, 15 * time.Minute, http.StatusServiceUnavailable, "stalled: 3 record(s) due"},
		{"check off", stalledFunc(func(time.Duration) error { t.Error("asked with the check off"); return errors.New("x") }), 0, http.StatusOK, "ok\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			healthz(tc.w, tc.patience)(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
			if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.body) {
				t.Errorf("got %d %q; want %d containing %q", rec.Code, rec.Body.String(), tc.code, tc.body)
			}
		})
	}
}
