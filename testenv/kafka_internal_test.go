package testenv

import "testing"

// A cluster id never starts with '-' (StorageTool would read it as an option).
func TestClusterIDIsNeverAnOption(t *testing.T) {
	for range 5000 {
		if id := clusterID(); id == "" || id[0] == '-' || len(id) != 22 {
			t.Fatalf("cluster id %q", id)
		}
	}
}
