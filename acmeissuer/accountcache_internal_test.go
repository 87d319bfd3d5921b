package acmeissuer

import (
	"fmt"
	"testing"
)

// The account cache stays at its bound whatever the number of tenants, and
// never evicts an account still loading (its waiters hold that entry).
func TestAccountCacheBounded(t *testing.T) {
	i := &Issuer{accounts: map[string]*accountEntry{}}
	loading := &accountEntry{ready: make(chan struct{})}
	i.remember("loading", loading)
	for n := range 100000 {
		e := &accountEntry{ready: make(chan struct{})}
		close(e.ready)
		i.remember(fmt.Sprint("tenant-", n), e)
		if len(i.accounts) > maxCachedAccounts {
			t.Fatalf("after %d tenants the cache holds %d accounts, bound %d", n+1, len(i.accounts), maxCachedAccounts)
		}
	}
	if i.accounts["loading"] != loading {
		t.Error("an account still loading was evicted")
	}
	if _, ok := i.accounts["tenant-99999"]; !ok {
		t.Error("the account just remembered is not in the cache")
	}
}
