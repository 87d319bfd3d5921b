package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// SetRenewalInfo makes Pebble answer ACME Renewal Information for the leaf
// of chainPEM (the first PEM block) with the suggested window start..end,
// through its management API (POST /set-renewal-info/). Pebble keeps
// sending Retry-After: 6h with it, so clients re-check on their own
// schedule. The window may lie in the past: that asks for renewal now.
func (s Settings) SetRenewalInfo(ctx context.Context, chainPEM string, start, end time.Time) error {
	ari, err := json.Marshal(map[string]any{"suggestedWindow": map[string]string{
		"start": start.UTC().Format(time.RFC3339Nano), "end": end.UTC().Format(time.RFC3339Nano)}})
	if err != nil {
		return err
	}
	body, err := json.Marshal(map[string]string{"certificate": chainPEM, "ariResponse": string(ari)})
	if err != nil {
		return err
	}
	hc, err := tlsClient(s.ACMETLSCA)
	if err != nil {
		return err
	}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.PebbleManagementURL+"/set-renewal-info/", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("testenv: set-renewal-info: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("testenv: set-renewal-info: %s: %s", resp.Status, msg)
	}
	return nil
}
