package clip

import (
	"fmt"
	"math"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
)

// Loss is a contrastive loss over the ranks of a communicator, as
// loss.ClipLoss and loss.SigLipLoss implement it: this rank's rows of image
// and text features in (b×dim each), this rank's loss and the gradients of
// its features and of the logit scale and bias out. Both methods are
// collective and return the same error on every rank.
type Loss[T blas.Float] interface {
	ForwardBackward(dImg, dTxt, img, txt []T, lg loss.Logit) (loss.Result, error)
	Forward(img, txt []T, lg loss.Logit) (float64, error)
}

var _ Loss[float32] = (*loss.ClipLoss[float32])(nil)

// Config is a training run, as every rank must be given it.
type Config struct {
	Model ModelConfig
	Optim OptimConfig
	// BatchSize is the rows per rank of a micro-batch and AccumFreq the
	// micro-batches of a step (named after OpenCLIP's --batch-size and
	// --accum-freq): a step takes BatchSize·AccumFreq rows on each rank,
	// and the global batch is W·BatchSize·AccumFreq rows.
	//
	// A step with AccumFreq = k equals the full-batch step, every gradient
	// included (GradCache; see Trainer.Gradients). OpenCLIP's accum_freq
	// does not quite: each of its k backward passes adds the whole
	// gradient of the logit scale and bias, which so get k times the
	// full-batch gradient (the heads' gradients agree).
	BatchSize, AccumFreq int
	// Epochs is the passes over the training rows.
	Epochs int
	// Seed draws the initial weights and the shuffle of every epoch.
	Seed uint64
}

// StepStats describes one step.
type StepStats struct {
	// Step counts the steps taken, this one included; Epoch is the epoch
	// the step belonged to (0-based).
	Step, Epoch int
	// Loss is the loss of the step's batch, the mean of the ranks' losses
	// (the global loss L in every OpenCLIP mode).
	Loss float64
	// LR is the learning rate the step used; Scale the exponentiated logit
	// scale after it (and its clamp).
	LR, Scale float64
}

// Trainer trains a Model data-parallel over the ranks of a communicator.
//
// Every rank is given the same training Source of N rows and reads from it
// only the rows it uses. A step takes a global batch of G =
// W·BatchSize·AccumFreq rows in the order that the seed, the epoch and G
// alone decide (see dataOrder: blocks of rows in a random order, shuffled
// again within each global batch), rank r taking the r-th slice of
// BatchSize·AccumFreq rows; an epoch is ⌊N/G⌋ steps. The rows a rank reads
// are checked for NaN and ±Inf, and a read error or a non-finite row on
// any rank is an error on every rank (one small all-reduce per step). A
// step is Gradients, then AdamW at the cosine schedule's learning rate,
// then the clamp of the logit scale. Since the order does not depend on W,
// a checkpoint resumes on any number of ranks that divides G (see Load).
//
// A Trainer is not safe for concurrent use; its methods that take a step,
// evaluate or checkpoint are collective.
type Trainer[T blas.Float] struct {
	comm     mpi.Comm
	cfg      Config
	model    *Model[T]
	loss     Loss[T]
	opt      *AdamW[T]
	train    Source
	rows     int // training rows N
	perEpoch int
	total    int
	step     int

	order    *dataOrder
	global   []int     // the global batch's rows
	xi, xt   []float32 // this rank's rows as read
	img, txt []T       // a step's input rows
	zi, zt   []T       // its features
	dzi, dzt []T       // their gradients
	zs       []T       // one micro-batch's recomputed features
	red      []T       // gradients and loss, all-reduced
	lossSum  [1]float64
}

// NewTrainer is collective: it returns a trainer of a new model
// (NewModel(cfg.Model, cfg.Seed)) whose weights are rank 0's on every rank,
// over the training rows train (the same set on every rank), with the loss
// l.
//
// It returns an error (ErrConfig) if the ranks pass configurations that
// differ in any field the run uses (model, optimizer, schedule, seed; the
// initial logit bias only with LogitBias) or sets of different shapes, or
// if a setting is NaN; and one wrapping ErrData if the training rows do
// not match the model's input widths or hold fewer than one global batch.
// It panics if comm, l or train is nil, BatchSize, AccumFreq or Epochs is
// not positive, or the model configuration is invalid (see NewModel).
func NewTrainer[T blas.Float](comm mpi.Comm, cfg Config, l Loss[T], train Source) (*Trainer[T], error) {
	if comm == nil {
		panic(errNilComm)
	}
	if l == nil {
		panic(errNilLoss)
	}
	if train == nil {
		panic(errNilData)
	}
	if cfg.BatchSize < 1 || cfg.AccumFreq < 1 {
		panic(errBatch)
	}
	if cfg.Epochs < 1 {
		panic(errEpochs)
	}
	m := NewModel[T](cfg.Model, cfg.Seed)
	mc := cfg.Model
	bias := 0
	if mc.LogitBias {
		bias = 1
	}
	initBias := 0.0
	if mc.LogitBias {
		initBias = mc.InitLogitBias
	}
	oc := cfg.Optim
	// The seed is compared as two 32-bit halves, each exact in float64.
	err := agreeValues(comm, "trainer", []string{
		"image dim", "text dim", "embed dim", "head", "hidden", "logit bias",
		"batch size", "accum freq", "epochs", "warmup", "training rows", "training image dim", "training text dim", "parameters",
		"seed (high 32 bits)", "seed (low 32 bits)", "init logit scale", "init logit bias",
		"lr", "wd", "beta1", "beta2", "eps",
	}, []float64{
		float64(mc.ImageDim), float64(mc.TextDim), float64(mc.EmbedDim), float64(mc.Head), float64(mc.Hidden), float64(bias),
		float64(cfg.BatchSize), float64(cfg.AccumFreq), float64(cfg.Epochs), float64(oc.Warmup),
		float64(train.Rows()), float64(train.ImageDim()), float64(train.TextDim()), float64(len(m.params)),
		float64(cfg.Seed >> 32), float64(cfg.Seed & (1<<32 - 1)), mc.InitLogitScale, initBias,
		oc.LR, oc.WD, oc.Beta1, oc.Beta2, oc.Eps,
	})
	if err == nil && (train.ImageDim() != mc.ImageDim || train.TextDim() != mc.TextDim) {
		err = fmt.Errorf("%w: the training rows have image and text widths %d and %d, the model %d and %d",
			ErrData, train.ImageDim(), train.TextDim(), mc.ImageDim, mc.TextDim)
	}
	w := comm.Size()
	rows := cfg.BatchSize * cfg.AccumFreq
	g := w * rows
	perEpoch := train.Rows() / g
	if err == nil && perEpoch == 0 {
		err = fmt.Errorf("%w: %d training rows are fewer than one global batch of %d (%d ranks × batch size %d × accum freq %d)",
			ErrData, train.Rows(), g, w, cfg.BatchSize, cfg.AccumFreq)
	}
	if err = Agree(comm, err); err != nil {
		return nil, err
	}
	if err := broadcast(comm, "the initial weights", m.params); err != nil {
		return nil, err
	}
	e := mc.EmbedDim
	t := &Trainer[T]{
		comm: comm, cfg: cfg, model: m, loss: l, train: train, rows: train.Rows(),
		opt:      NewAdamW[T](cfg.Optim, len(m.params)),
		perEpoch: perEpoch, total: perEpoch * cfg.Epochs,
		order:  newDataOrder(cfg.Seed, train.Rows(), g),
		global: make([]int, g),
		xi:     make([]float32, rows*mc.ImageDim),
		xt:     make([]float32, rows*mc.TextDim),
		img:    make([]T, rows*mc.ImageDim),
		txt:    make([]T, rows*mc.TextDim),
		zi:     make([]T, rows*e), zt: make([]T, rows*e),
		dzi: make([]T, rows*e), dzt: make([]T, rows*e),
		zs:  make([]T, cfg.BatchSize*e),
		red: make([]T, len(m.params)+1),
	}
	return t, nil
}

// Model returns the model being trained.
func (t *Trainer[T]) Model() *Model[T] { return t.model }

// Config returns the run's configuration.
func (t *Trainer[T]) Config() Config { return t.cfg }

// StepsPerEpoch returns the steps of one epoch.
func (t *Trainer[T]) StepsPerEpoch() int { return t.perEpoch }

// TotalSteps returns the steps of the whole run, Epochs·StepsPerEpoch.
func (t *Trainer[T]) TotalSteps() int { return t.total }

// Steps returns the steps taken so far.
func (t *Trainer[T]) Steps() int { return t.step }

// GlobalBatch returns the rows of one step over all ranks.
func (t *Trainer[T]) GlobalBatch() int {
	return t.comm.Size() * t.cfg.BatchSize * t.cfg.AccumFreq
}

// Step takes the next step of the schedule: this rank reads its slice of
// the next global batch (see Trainer) and calls StepBatch. It returns
// ErrDone once TotalSteps steps are taken; an error wrapping ErrData,
// the same on every rank, if some rank cannot read its rows or finds NaN
// or ±Inf in them (naming the file and row); and Gradients' errors.
func (t *Trainer[T]) Step() (StepStats, error) {
	if t.step >= t.total {
		return StepStats{}, ErrDone
	}
	n := t.cfg.BatchSize * t.cfg.AccumFreq
	rows := t.BatchRows(t.step)[t.comm.Rank()*n : (t.comm.Rank()+1)*n]
	err := ReadRows(t.train, t.xi, t.xt, rows)
	if err == nil {
		err = checkRows(t.train, t.xi, t.xt, rows)
	}
	if err = Agree(t.comm, err); err != nil {
		return StepStats{}, err
	}
	for i, v := range t.xi {
		t.img[i] = T(v)
	}
	for i, v := range t.xt {
		t.txt[i] = T(v)
	}
	return t.StepBatch(t.img, t.txt)
}

// BatchRows returns the training rows of the global batch of a step
// (0-based), in the batch's order: rank r's rows are the r-th of W equal
// slices. The order depends only on the seed, the epoch, the number of
// training rows and the global batch (see Trainer). The slice is the
// trainer's and changes with the next call. It panics if step is outside
// [0, TotalSteps).
func (t *Trainer[T]) BatchRows(step int) []int {
	if step < 0 || step >= t.total {
		panic("clip: step outside the schedule")
	}
	t.order.batch(t.global, step/t.perEpoch, step%t.perEpoch)
	return t.global
}

// StepBatch takes the next step of the schedule on the given rows: img
// (n×ImageDim) and txt (n×TextDim), n a multiple of AccumFreq, the same n
// on every rank. Step calls it; tests call it with rows of their own.
func (t *Trainer[T]) StepBatch(img, txt []T) (StepStats, error) {
	if t.step >= t.total {
		return StepStats{}, ErrDone
	}
	lr := CosineLR(t.cfg.Optim.LR, t.cfg.Optim.Warmup, t.total, t.step)
	l, err := t.Gradients(img, txt)
	if err != nil {
		return StepStats{}, err
	}
	t.opt.Step(t.model.params, t.model.grads, t.model.layout, lr)
	t.model.clampScale()
	st := StepStats{Step: t.step + 1, Epoch: t.step / t.perEpoch, Loss: l, LR: lr, Scale: t.model.Logit().Scale}
	t.step++
	return st, nil
}

// Gradients is collective: it sets the model's Grads to the gradient of the
// loss over the global batch made of every rank's rows img (n×ImageDim) and
// txt (n×TextDim), averaged over ranks as DDP does, and returns the loss
// averaged over ranks. n must be a multiple of AccumFreq.
//
// With AccumFreq = k > 1 it is GradCache: the features of the k
// micro-batches are computed without keeping activations, the loss and its
// gradient with respect to all n rows' features, logit scale and bias are
// taken once, and each micro-batch's heads are re-run and back-propagated
// with its rows of that gradient. The result equals the k = 1 computation
// up to rounding, the logit scale's and bias's gradients included (OpenCLIP's
// accum_freq adds those once per micro-batch: k times the full-batch
// gradient).
//
// In OpenCLIP's gather_with_grad modes the averaged gradient is the exact
// gradient of the global loss; in the other modes it is what OpenCLIP's DDP
// gets (see the loss package). It returns the loss's errors (non-finite
// features or logit scale, ranks that disagree on n), the same on every
// rank. It panics if the lengths do not fit the model or n is not a
// multiple of AccumFreq.
func (t *Trainer[T]) Gradients(img, txt []T) (float64, error) {
	m := t.model
	di, dt, e := m.cfg.ImageDim, m.cfg.TextDim, m.cfg.EmbedDim
	if len(img)%di != 0 || len(txt)%dt != 0 || len(img)/di != len(txt)/dt {
		panic(errBatchLen)
	}
	n, k := len(img)/di, t.cfg.AccumFreq
	if n%k != 0 {
		panic(errBatchLen)
	}
	mb := n / k
	t.zi, t.zt = grow(t.zi, n*e), grow(t.zt, n*e)
	t.dzi, t.dzt = grow(t.dzi, n*e), grow(t.dzt, n*e)
	t.zs = grow(t.zs, mb*e)
	clear(m.grads)
	micro := func(j int) (xi, xt, zi, zt, dzi, dzt []T) {
		return img[j*mb*di : (j+1)*mb*di], txt[j*mb*dt : (j+1)*mb*dt],
			t.zi[j*mb*e : (j+1)*mb*e], t.zt[j*mb*e : (j+1)*mb*e],
			t.dzi[j*mb*e : (j+1)*mb*e], t.dzt[j*mb*e : (j+1)*mb*e]
	}
	// Features of every micro-batch; the last one's activations stay for
	// backward.
	for j := range k {
		xi, xt, zi, zt, _, _ := micro(j)
		m.EncodeImage(zi, xi)
		m.EncodeText(zt, xt)
	}
	lg := m.Logit()
	res, err := t.loss.ForwardBackward(t.dzi, t.dzt, t.zi, t.zt, lg)
	if err != nil {
		return 0, err
	}
	// Backward, last micro-batch first: the heads still hold its
	// activations, so only the others are re-run (GradCache).
	for j := k - 1; j >= 0; j-- {
		xi, xt, zi, zt, dzi, dzt := micro(j)
		rerun := j < k-1
		if rerun {
			// Re-run the heads to rebuild this micro-batch's activations.
			m.EncodeImage(t.zs, xi)
			zi = t.zs
		}
		m.BackwardImage(dzi, zi, xi)
		if rerun {
			m.EncodeText(t.zs, xt)
			zt = t.zs
		}
		m.BackwardText(dzt, zt, xt)
	}
	// d loss / d log scale = d loss / d scale · scale.
	m.grads[m.scale] = T(res.GradScale * lg.Scale)
	if m.bias >= 0 {
		m.grads[m.bias] = T(res.GradBias)
	}
	// DDP: average the gradients (and the loss) over ranks.
	p := len(m.grads)
	copy(t.red, m.grads)
	t.red[p] = T(res.Loss)
	if w := t.comm.Size(); w > 1 {
		if err := mpi.Allreduce(t.comm, mpi.Sum, t.red, t.red); err != nil {
			return 0, mpi.Fail(t.comm, fmt.Errorf("clip: averaging gradients: %w", err))
		}
		inv := 1 / float64(w)
		for i, v := range t.red {
			t.red[i] = T(float64(v) * inv)
		}
		copy(m.grads, t.red[:p])
	}
	return float64(t.red[p]), nil
}

// Loss is collective: it returns the loss, averaged over ranks, of the
// global batch made of every rank's rows img (n×ImageDim) and txt
// (n×TextDim), without gradients; n need not be a multiple of AccumFreq.
// It reuses the trainer's feature buffers; like EncodeImage, it replaces
// the activations the heads keep for backward. It returns the loss's
// errors, the same on every rank, and communication errors. It panics if
// img or txt is not whole rows of the model's widths, or they hold
// different numbers of rows.
func (t *Trainer[T]) Loss(img, txt []T) (float64, error) {
	m := t.model
	di, dt, e := m.cfg.ImageDim, m.cfg.TextDim, m.cfg.EmbedDim
	if len(img)%di != 0 || len(txt)%dt != 0 || len(img)/di != len(txt)/dt {
		panic(errBatchLen)
	}
	n := len(img) / di
	t.zi, t.zt = grow(t.zi, n*e), grow(t.zt, n*e)
	m.EncodeImage(t.zi, img)
	m.EncodeText(t.zt, txt)
	l, err := t.loss.Forward(t.zi, t.zt, m.Logit())
	if err != nil {
		return 0, err
	}
	v := t.lossSum[:]
	v[0] = l
	if err := t.comm.AllreduceF64(mpi.Sum, v, v); err != nil {
		return 0, mpi.Fail(t.comm, fmt.Errorf("clip: averaging the loss: %w", err))
	}
	return v[0] / float64(t.comm.Size()), nil
}

// isFinite reports whether every value is finite.
func isFinite[T blas.Float](v []T) bool {
	for _, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return false
		}
	}
	return true
}
