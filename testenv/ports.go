package testenv

import (
	"fmt"
	"os"
	"strconv"
)

// EnvPortOffset shifts every port of the stack by a number, so a second
// stack (another checkout, a clean-clone CI rehearsal) can run beside the
// first. Read once at start; 0 by default.
const EnvPortOffset = "CERTFLEET_TESTENV_PORT_OFFSET"

var portOffset, portOffsetErr = func() (int, error) {
	v := os.Getenv(EnvPortOffset)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 30000 {
		return 0, fmt.Errorf("testenv: %s=%q: want a whole number from 0 to 30000", EnvPortOffset, v)
	}
	return n, nil
}()

// port is a default port moved by the offset.
func port(base int) int { return base + portOffset }

// addr is a loopback address on port(base).
func addr(base int) string { return fmt.Sprintf("127.0.0.1:%d", port(base)) }
