package clip

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/clipmpi/clipmpi/mpi"
)

// TestAgree: every rank gets the lowest failing rank's error, with its
// sentinel; nil everywhere when nobody failed.
func TestAgree(t *testing.T) {
	errs := onRanks(4, func(c mpi.Comm) error {
		var err error
		switch c.Rank() {
		case 1:
			err = fmt.Errorf("%w: rank one's file is bad", ErrData)
		case 3:
			err = errors.New("rank three's problem")
		}
		return Agree(c, err)
	})
	for r, err := range errs {
		var re *RankError
		if !errors.As(err, &re) || re.Rank != 1 || !errors.Is(err, ErrData) || err.Error() != "rank 1: clip: bad data: rank one's file is bad" {
			t.Errorf("rank %d: %v", r, err)
		}
	}
	for r, err := range onRanks(3, func(c mpi.Comm) error { return Agree(c, nil) }) {
		if err != nil {
			t.Errorf("rank %d: %v with no failure", r, err)
		}
	}
	long := strings.Repeat("x", 5000)
	for r, err := range onRanks(2, func(c mpi.Comm) error {
		if c.Rank() == 1 {
			return Agree(c, errors.New(long))
		}
		return Agree(c, nil)
	}) {
		// The failing rank keeps its error whole; the others get it cut.
		if want := map[int]int{0: maxMessage, 1: 5000}[r] + len("rank 1: "); err == nil || len(err.Error()) != want {
			t.Errorf("rank %d: message of %d bytes, want %d", r, len(fmt.Sprint(err)), want)
		}
	}
}

// TestTrainerConfigMismatch: ranks given different configurations get the
// same ErrConfig error, which names the field, instead of a hang.
func TestTrainerConfigMismatch(t *testing.T) {
	errs := onRanks(2, func(c mpi.Comm) error {
		cfg := testConfig(Linear, false)
		if c.Rank() == 1 {
			cfg.BatchSize = 3
		}
		_, err := NewTrainer[float64](c, cfg, nilLoss{}, memOf(testPairs(cfg.Model, 24)))
		return err
	})
	for r, err := range errs {
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "batch size ranges from 3 to 6") {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

// nilLoss is a Loss that is never called.
type nilLoss struct{ Loss[float64] }
