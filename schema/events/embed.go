// Package eventschema holds the published JSON Schemas (draft 2020-12) of
// certfleet's Kafka message values, one file per message type and schema
// version: v1/<type without "dev.certfleet.">.json. The files are the
// contract; this package only embeds them so Go tests and tools can load
// them. README.md beside them is the events reference.
package eventschema

import "embed"

// FS holds v1/*.json.
//
//go:embed v1/*.json
var FS embed.FS
