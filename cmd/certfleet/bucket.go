package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/certfleet/certfleet/internal/caconfig"
	"github.com/certfleet/certfleet/ratelimit"
)

const bucketUsage = `usage: certfleet bucket inspect <limit> <value> [--ca NAME] [flags]

` + bucketAbout + "\n"

const bucketAbout = `Shows one rate-limit bucket: its key, the limit in force (an override or the
catalogue default), what is left, and any CA penalty. <value> is the bucket's
subject: an account id, which is the request's tenant (NewOrdersPerAccount),
a registered domain (CertificatesPerDomain), a SAN set hash
(CertificatesPerFQDNSet), "account:domain"
(FailedAuthorizationsPerDomainPerAccount) or "*" (FleetOrdersPerSecond).

--ca names the CA as requests and the workers' -ca NAME=URL do (bucket keys
start with it); workers give a CA their limit catalogue does not list Let's
Encrypt's limits, and so does this command. With --catalogue (the workers'
-limits file), pass --ca NAME=URL exactly as the workers do: a CA the file
lists is named by the file's id.`

func bucket(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, bucketUsage)
		return fmt.Errorf("%w: bucket: missing command (inspect)", errUsage)
	}
	switch args[0] {
	case "inspect":
		return bucketInspect(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, bucketUsage)
		return nil
	}
	fmt.Fprint(stderr, bucketUsage)
	return fmt.Errorf("%w: bucket: unknown command %q", errUsage, args[0])
}

type bucketJSON struct {
	Bucket        string     `json:"bucket"`
	Limit         string     `json:"limit_name"`
	Value         string     `json:"value"`
	Count         int64      `json:"count"`
	Period        string     `json:"period"`
	Burst         int64      `json:"burst"`
	Source        string     `json:"source"`                // "default" or "override"
	OverrideID    string     `json:"override_id,omitempty"` // when source is override
	Stored        bool       `json:"stored"`                // false: never spent, full
	TAT           *time.Time `json:"tat"`
	Remaining     int64      `json:"remaining"`
	ResetIn       string     `json:"reset_in"`
	RetryIn       string     `json:"retry_in"` // for a cost of 1; "0s" when it would be allowed
	PenaltyUntil  *time.Time `json:"penalty_until"`
	AllowedNow    bool       `json:"allowed_now"` // would a spend of 1 be allowed now
	InspectedAt   time.Time  `json:"inspected_at"`
	LastUpdatedAt *time.Time `json:"updated_at"`
}

func bucketInspect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const cmd = "bucket inspect"
	f := newAdminFlags(cmd, "<limit> <value> [--ca NAME] [flags]", bucketAbout, stdout, stderr, true)
	caSpec := f.fs.String("ca", envOr("CERTFLEET_CA", "letsencrypt"), "the CA: NAME as in requests and the workers' -ca NAME=URL, or NAME=URL (env CERTFLEET_CA)")
	catPath := f.fs.String("catalogue", "", "limit catalogue file the workers use (their -limits); default: the built-in one (Let's Encrypt)")
	account := f.fs.String("account", "", "account id, so account overrides are considered (derived from the value where it holds one)")
	domain := f.fs.String("domain", "", "domain, so domain overrides are considered (derived from the value where it holds one)")
	pos, err := f.parse(args, 2, 2, "<limit> <value>")
	if err != nil {
		return err
	}
	name, err := parseName(cmd, pos[0])
	if err != nil {
		return err
	}
	cat, dir, err := workerCatalogue(*caSpec, *catPath)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", errUsage, cmd, err)
	}
	txn, err := cat.Transaction(dir, name, pos[1])
	if err != nil {
		return fmt.Errorf("%w: %s: %v", errUsage, cmd, err)
	}
	deriveSubjects(&txn, *account, *domain)
	lim, _ := cat.Default(dir, name)

	d, ctx, done, err := f.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	now := time.Now()
	ovs, err := ratelimit.NewOverrideStore(d, nil).Find(ctx, now, []ratelimit.Transaction{txn})
	if err != nil {
		return explain(cmd, err)
	}
	source, ovID := "default", ""
	if ovs[0] != nil {
		lim, source, ovID = ovs[0].Limit, "override", ovs[0].ID
	}
	st, stored, err := ratelimit.NewDBStore(d).Bucket(ctx, txn.Key())
	if err != nil {
		return explain(cmd, err)
	}
	dec := ratelimit.Check(lim, st.TAT, now, 1)
	penalized := st.PenaltyUntil.After(now)
	retryIn := dec.RetryIn
	if penalized {
		retryIn = max(retryIn, st.PenaltyUntil.Sub(now))
	}
	allowed := dec.Allowed && !penalized

	if *f.json {
		j := bucketJSON{Bucket: txn.Key(), Limit: string(name), Value: pos[1], Count: lim.Count, Period: lim.Period.String(), Burst: lim.Burst,
			Source: source, OverrideID: ovID, Stored: stored, Remaining: dec.Remaining, ResetIn: dec.ResetIn.String(),
			RetryIn: retryIn.String(), AllowedNow: allowed, InspectedAt: now.UTC()}
		if !st.TAT.IsZero() {
			t := st.TAT.UTC()
			j.TAT = &t
		}
		if penalized {
			t := st.PenaltyUntil.UTC()
			j.PenaltyUntil = &t
		}
		if stored {
			t := st.UpdatedAt.UTC()
			j.LastUpdatedAt = &t
		}
		return writeJSON(stdout, j)
	}
	src := "catalogue default"
	if ovID != "" {
		src = "override " + ovID + " ('certfleet override get " + ovID + "')"
	}
	tat := fmtTime(st.TAT)
	if !stored {
		tat = "- (never spent: full)"
	}
	pen := "none"
	if penalized {
		pen = fmt.Sprintf("blocked until %s (%s left; 'certfleet penalty clear %s' lifts it)", fmtTime(st.PenaltyUntil), fmtDuration(st.PenaltyUntil.Sub(now)), txn.Key())
	}
	verdict := "yes"
	if !allowed {
		verdict = "no, retry in " + fmtDuration(retryIn)
	}
	return table(stdout,
		[]string{"bucket", txn.Key()},
		[]string{"limit", fmt.Sprintf("%s burst %d, from %s", rate(lim), lim.Burst, src)},
		[]string{"remaining", strconv.FormatInt(dec.Remaining, 10) + " of " + strconv.FormatInt(lim.Burst, 10)},
		[]string{"full in", fmtDuration(dec.ResetIn)},
		[]string{"tat", tat},
		[]string{"penalty", pen},
		[]string{"spend 1 now", verdict},
	)
}

// deriveSubjects fills the account and domain an override may match, from
// the flags or from what the bucket value holds (see
// ratelimit.Catalogue.OrderTransactions for the value of each limit).
func deriveSubjects(t *ratelimit.Transaction, account, domain string) {
	switch t.Name {
	case ratelimit.NewOrdersPerAccount:
		t.Account = t.Value
	case ratelimit.CertificatesPerDomain:
		t.Domain = t.Value
	case ratelimit.FailedAuthorizationsPerDomainPerAccount:
		t.Account, t.Domain, _ = strings.Cut(t.Value, ":")
	}
	if account != "" {
		t.Account = account
	}
	if domain != "" {
		t.Domain = domain
	}
}

// workerCatalogue returns the limit catalogue a worker uses for the CA
// caSpec ("NAME" or "NAME=URL", as the worker's -ca) with the catalogue file
// catPath ("" for the built-in one), and the CA's directory in it. Like the
// worker, it gives a CA the catalogue does not list Let's Encrypt's limits
// under the CA's name. A bare NAME stands for the built-in catalogue's CA of
// that id, else for a CA of that name the catalogue does not list (its
// directory does not enter the bucket key).
func workerCatalogue(caSpec, catPath string) (*ratelimit.Catalogue, string, error) {
	cat := ratelimit.DefaultCatalogue()
	if catPath != "" {
		var err error
		if cat, err = ratelimit.LoadCatalogue(catPath); err != nil {
			return nil, "", fmt.Errorf("--catalogue: %v", err)
		}
	}
	var ca caconfig.CA
	if spec := strings.TrimSpace(caSpec); strings.Contains(spec, "=") {
		cas, err := caconfig.Parse(spec) // NAME=URL, as the workers' -ca
		if err == nil {
			err = caconfig.CheckAll(cas)
		}
		if err != nil || len(cas) != 1 {
			return nil, "", fmt.Errorf("--ca %q: want NAME or NAME=URL, as the workers' -ca (%v)", caSpec, err)
		}
		ca = cas[0]
	} else {
		if spec == "" {
			return nil, "", fmt.Errorf("--ca %q: want NAME or NAME=URL, as the workers' -ca", caSpec)
		}
		if catPath != "" {
			return nil, "", fmt.Errorf("--ca %q: with --catalogue, pass --ca NAME=URL as the workers do (a CA the file lists is named by the file's id)", caSpec)
		}
		ca.Name = spec
		switch spec {
		case "letsencrypt":
			ca.Directory = ratelimit.LetsEncryptDirectory
		case "letsencrypt-staging":
			ca.Directory = ratelimit.LetsEncryptStagingDirectory
		default:
			ca.Directory = "https://" + spec + ".ca.invalid/directory" // a stand-in: not in the catalogue, like the worker's own directory
		}
	}
	cat, err := cat.Serving(ca.Limits())
	if err != nil {
		return nil, "", fmt.Errorf("--ca %q: %v", caSpec, err)
	}
	return cat, ca.Directory, nil
}
