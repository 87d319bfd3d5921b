package deploy_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// ttlRE matches one row-level TTL statement: its table and expression.
var ttlRE = regexp.MustCompile(`(?m)^ALTER TABLE (\w+) SET \(\s*ttl_expiration_expression = \$\$(.*?)\$\$,\s*ttl_job_cron = '[^']+'\s*\);`)

// sqlWords are the words of the TTL expressions that are not columns.
var sqlWords = map[string]bool{"greatest": true, "to_timestamp": true, "float8": true, "interval": true, "day": true, "days": true,
	"case": true, "when": true, "then": true, "else": true, "end": true, "in": true, "and": true, "or": true, "is": true, "not": true, "null": true,
	"succeeded": true, "failed": true, "released": true, "ordering": true, "e9": true}

// columnsOf returns the columns every migration gives table (CREATE TABLE
// and ADD COLUMN), empty when no migration creates it.
func columnsOf(migrations, table string) map[string]bool {
	cols := map[string]bool{}
	create := regexp.MustCompile(`(?s)CREATE TABLE IF NOT EXISTS ` + table + ` \((.*?)\n\);`).FindStringSubmatch(migrations)
	if create == nil {
		return cols
	}
	for _, l := range strings.Split(create[1], "\n") {
		if f := strings.Fields(strings.TrimSpace(l)); len(f) > 1 && f[0] != "--" && f[0] != "PRIMARY" {
			cols[f[0]] = true
		}
	}
	for _, m := range regexp.MustCompile(`ALTER TABLE `+table+` ADD COLUMN IF NOT EXISTS (\w+)`).FindAllStringSubmatch(migrations, -1) {
		cols[m[1]] = true
	}
	return cols
}

// checkRetentionSQL: every TTL statement names a table a migration creates
// and only columns it has.
func checkRetentionSQL(sql, migrations string) []error {
	var errs []error
	stmts := ttlRE.FindAllStringSubmatch(sql, -1)
	if len(stmts) == 0 {
		return []error{fmt.Errorf("retention.sql: no ALTER TABLE ... SET (ttl_expiration_expression = $$...$$, ttl_job_cron = ...)")}
	}
	if n := strings.Count(sql, "\nALTER TABLE"); n != len(stmts) {
		errs = append(errs, fmt.Errorf("retention.sql: %d ALTER TABLE statements, %d in the expected form", n, len(stmts)))
	}
	for _, s := range stmts {
		table, expr := s[1], s[2]
		cols := columnsOf(migrations, table)
		if len(cols) == 0 {
			errs = append(errs, fmt.Errorf("retention.sql: no migration creates table %s", table))
			continue
		}
		expr = regexp.MustCompile(`'[^']*'`).ReplaceAllString(expr, "")
		for _, w := range regexp.MustCompile(`[a-z_][a-z0-9_]*`).FindAllString(strings.ToLower(expr), -1) {
			if !sqlWords[w] && !cols[w] {
				errs = append(errs, fmt.Errorf("retention.sql: %s has no column %q", table, w))
			}
		}
	}
	return errs
}

func TestRetentionSQL(t *testing.T) {
	sql, err := os.ReadFile("cockroachdb/retention.sql")
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(root, "schema/migrations/*.sql"))
	if err != nil || len(files) == 0 {
		t.Fatalf("migrations: %v", err)
	}
	var mig strings.Builder
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		mig.Write(b)
	}
	for _, err := range checkRetentionSQL(string(sql), mig.String()) {
		t.Error(err)
	}
	for _, tc := range []struct{ old, new, want string }{
		{"(not_after + INTERVAL", "(expired_at + INTERVAL", `issued_certificates has no column "expired_at"`},
		{"ALTER TABLE dlq_replays", "ALTER TABLE dlq_replay", "no migration creates table dlq_replay"},
		{"ttl_job_cron = '@hourly'", "ttl_job_cron '@hourly'", "in the expected form"},
	} {
		broken := strings.Replace(string(sql), tc.old, tc.new, 1)
		if broken == string(sql) {
			t.Errorf("mutation %q not applicable", tc.old)
			continue
		}
		if errs := checkRetentionSQL(broken, mig.String()); !containsErr(errs, tc.want) {
			t.Errorf("retention.sql with %q: no error containing %q; got %v", tc.new, tc.want, errs)
		}
	}
}
