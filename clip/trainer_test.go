package clip

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// TestTrainerConfigAgreement: when one rank is given another optimizer
// setting or seed, or a NaN one, every rank's NewTrainer returns an
// ErrConfig error that names it, and none is left waiting.
func TestTrainerConfigAgreement(t *testing.T) {
	for _, c := range []struct {
		name   string
		rank   int // the rank whose configuration differs
		change func(*Config)
		want   string
	}{
		{"lr", 1, func(c *Config) { c.Optim.LR = 2e-2 }, "lr ranges from 0.01 to 0.02 over the ranks"},
		{"lr on rank 0", 0, func(c *Config) { c.Optim.LR = 1.5e-2 }, "lr ranges from 0.01 to 0.015 over the ranks"},
		{"wd", 1, func(c *Config) { c.Optim.WD = 0 }, "wd ranges from 0 to 0.1 over the ranks"},
		{"beta1", 1, func(c *Config) { c.Optim.Beta1 = 0.8 }, "beta1 ranges from 0.8 to 0.9"},
		{"beta2", 1, func(c *Config) { c.Optim.Beta2 = 0.999 }, "beta2 ranges from 0.98 to 0.999"},
		{"eps", 1, func(c *Config) { c.Optim.Eps = 1e-8 }, "eps ranges from 1e-08 to 1e-06"},
		// 1<<60 and 1<<60 | 1 are the same float64: the halves tell them apart.
		{"seed", 1, func(c *Config) { c.Seed = 1<<60 | 1 }, "seed (low 32 bits) ranges from 0 to 1"},
		{"init logit scale", 1, func(c *Config) { c.Model.InitLogitScale = 0 }, "init logit scale ranges from 0 to"},
		{"warmup", 1, func(c *Config) { c.Optim.Warmup = 3 }, "warmup ranges from 2 to 3"},
		{"NaN lr", 1, func(c *Config) { c.Optim.LR = math.NaN() }, "lr is NaN on some rank"},
	} {
		t.Run(c.name, func(t *testing.T) {
			errs := onRanksWithin(t, 2, 30*time.Second, func(comm mpi.Comm) error {
				cfg := testConfig(Linear, false)
				if c.name == "seed" {
					cfg.Seed = 1 << 60
				}
				if comm.Rank() == c.rank {
					c.change(&cfg)
				}
				l := loss.NewClipLoss[float64](comm, cfg.Model.EmbedDim, loss.ClipOptions{})
				_, err := NewTrainer[float64](comm, cfg, l, memOf(testPairs(cfg.Model, 12)))
				return err
			})
			for r, err := range errs {
				if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) {
					t.Errorf("rank %d: %v, want ErrConfig saying %q", r, err, c.want)
				}
			}
		})
	}
	// A NaN setting is refused on one rank too.
	cfg := testConfig(Linear, false)
	cfg.Optim.Eps = math.NaN()
	l := loss.NewClipLoss[float64](mpi.Self(), cfg.Model.EmbedDim, loss.ClipOptions{})
	if _, err := NewTrainer[float64](mpi.Self(), cfg, l, memOf(testPairs(cfg.Model, 12))); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "eps is NaN") {
		t.Errorf("NaN eps on one rank: %v, want ErrConfig saying eps is NaN", err)
	}
}

// TestTrainerLossAllocs: Loss reuses the trainer's buffers, so that the
// finite-difference checks call it without allocating, and its value does
// not depend on what an earlier Gradients call left in them.
func TestTrainerLossAllocs(t *testing.T) {
	cfg := testConfig(MLP, false)
	data := testPairs(cfg.Model, 12)
	tr, err := NewTrainer[float64](mpi.Self(), cfg, loss.NewClipLoss[float64](mpi.Self(), cfg.Model.EmbedDim, loss.ClipOptions{}), memOf(data))
	if err != nil {
		t.Fatal(err)
	}
	img, txt := toT[float64](data.Image), toT[float64](data.Text)
	want, err := tr.Loss(img, txt) // sizes the buffers for 12 rows
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Gradients(img[:6*cfg.Model.ImageDim], txt[:6*cfg.Model.TextDim]); err != nil {
		t.Fatal(err)
	}
	if got, err := tr.Loss(img, txt); err != nil || got != want {
		t.Errorf("loss %v (%v) after a Gradients call, %v before", got, err, want)
	}
	if n := testing.AllocsPerRun(10, func() { tr.Loss(img, txt) }); n != 0 {
		t.Errorf("Loss allocates %v times per call, want 0", n)
	}
}
