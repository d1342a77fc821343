// Command train trains CLIP-style projection heads on paired embeddings
// across MPI ranks: the main job of clipmpi.
//
//	mpirun -np 2 ./train                               # built-in synthetic set
//	mpirun -np 4 ./train --train-data DIR --val-data DIR --batch-size 1024 --epochs 10
//	./train gen-data --out data                        # the synthetic set as .npy files
//	./train export --resume CKPT --out heads.safetensors   # the heads for PyTorch
//	mpirun -np 4 ./train embed --resume CKPT --image-data X.npy --text-data Y.npy --out DIR
//	mpirun -np 4 ./train eval --resume CKPT --val-data DIR --summary eval.json
//
// Flags are named like OpenCLIP's (--local-loss, --gather-with-grad,
// --siglip, --batch-size per rank, --accum-freq, --lr, --wd, --epochs,
// --warmup, --seed, --resume, --logs). --accum-freq differs in one respect:
// its step equals the full-batch step, where OpenCLIP's gives the logit
// scale and bias accum-freq times their full-batch gradient. Rank 0 prints the backends, then a
// line every --log-every steps (or a progress bar on a terminal) and the
// held-out metrics (OpenCLIP's recall, mean and median rank, validation
// loss) after every --val-frequency epochs; it appends a row per step and
// per evaluation to LOGS/metrics.csv as it goes, writes checkpoints under
// LOGS/checkpoints, LOGS/curves.png and, with --summary, a JSON summary. A
// checkpoint resumes (--resume) on any number of ranks that divides its
// global batch, continuing metrics.csv. On any error every rank exits non-zero
// and the cause is printed once, naming the rank that met it: an error the
// ranks decided together ("train: rank R: CAUSE") by that rank, a failure
// that only some ranks met ("mpi: rank R of W: CAUSE", see mpi.Fail) by
// the failing rank as it ends the job.
package main

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/clipmpi/clipmpi/blas"
	"github.com/clipmpi/clipmpi/clip"
	"github.com/clipmpi/clipmpi/loss"
	"github.com/clipmpi/clipmpi/mpi"
	"github.com/clipmpi/clipmpi/slurm"
)

// options are the command-line flags.
type options struct {
	trainData, valData string
	valSize            int
	synth              clip.SyntheticConfig
	synthRows          int

	head           string
	embedDim       int
	hidden         int
	initLogitScale float64
	initLogitBias  float64

	localLoss, gatherWithGrad, siglip bool
	algo                              string
	distImpl                          string
	tile                              int

	batchSize, accumFreq int
	lr, wd               float64
	beta1, beta2, eps    float64
	warmup, epochs       int
	seed                 uint64
	dtype                string
	precision            string

	resume        string
	logs          string
	summary       string
	saveFrequency int
	valFrequency  int
	logEvery      int
	progress      string
}

func parseFlags(args []string) (*options, error) {
	o := &options{synth: clip.DefaultSynthetic}
	fs := flag.NewFlagSet("train", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: train [flags]        (under mpirun for several ranks)\n"+
			"       train gen-data [flags]  (write the synthetic set as .npy files; train gen-data -h)\n"+
			"       train export --resume CKPT --out heads.safetensors   (the heads for PyTorch)\n"+
			"       train embed --resume CKPT --image-data X.npy [--text-data Y.npy] --out DIR\n"+
			"       train eval --resume CKPT --val-data DIR\n\nflags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.trainData, "train-data", "", "training pairs: a directory of .npy shards or IMAGE.npy,TEXT.npy (float32 or float16, [n, d]); empty: the built-in synthetic set")
	fs.StringVar(&o.valData, "val-data", "", "held-out pairs, as --train-data; empty: the last --val-size rows of the training data (or synthetic rows after them)")
	fs.IntVar(&o.valSize, "val-size", 1000, "held-out rows when --val-data is not given")
	fs.IntVar(&o.synthRows, "synth-rows", 32768, "training rows of the synthetic set")
	fs.IntVar(&o.synth.Latent, "synth-latent", o.synth.Latent, "latent factors shared by a synthetic pair")
	fs.IntVar(&o.synth.ImageDim, "synth-image-dim", o.synth.ImageDim, "width of synthetic image embeddings")
	fs.IntVar(&o.synth.TextDim, "synth-text-dim", o.synth.TextDim, "width of synthetic text embeddings")
	fs.Float64Var(&o.synth.Noise, "synth-noise", o.synth.Noise, "noise of synthetic embeddings (the signal has unit variance per coordinate)")
	fs.Uint64Var(&o.synth.Seed, "synth-seed", o.synth.Seed, "seed of the synthetic set")

	fs.StringVar(&o.head, "head", "linear", "projection head: linear or mlp (two layers, GELU)")
	fs.IntVar(&o.embedDim, "embed-dim", 64, "width of the shared embedding space")
	fs.IntVar(&o.hidden, "hidden", 256, "hidden width of the mlp head")
	fs.Float64Var(&o.initLogitScale, "init-logit-scale", math.NaN(), "initial log logit scale (default ln(1/0.07), with --siglip ln 10)")
	fs.Float64Var(&o.initLogitBias, "init-logit-bias", math.NaN(), "initial logit bias; setting it adds a learnable bias (default with --siglip: -10)")

	fs.BoolVar(&o.localLoss, "local-loss", true, "OpenCLIP local_loss: each rank's loss over its own rows against all columns (--local-loss=false for the global loss)")
	fs.BoolVar(&o.gatherWithGrad, "gather-with-grad", true, "OpenCLIP gather_with_grad: gradients flow back through the all-gather")
	fs.BoolVar(&o.siglip, "siglip", false, "use the SigLIP sigmoid loss instead of CLIP's softmax loss")
	fs.StringVar(&o.algo, "algo", "auto", "ClipLoss algorithm: naive, fused, tiled, ring, or auto (the fastest the cost model predicts that fits the memory; printed at start)")
	fs.StringVar(&o.distImpl, "loss-dist-impl", "auto", "SigLipLoss distribution (OpenCLIP's dist_impl): bidir, shift, reduce, gather, or auto (as --algo auto)")
	fs.IntVar(&o.tile, "tile", 0, "column tile of the tiled and ring algorithms and of SigLIP (0: default)")

	fs.IntVar(&o.batchSize, "batch-size", 1024, "rows per rank per micro-batch (with --resume: the checkpoint's global batch / (ranks × accum-freq))")
	fs.IntVar(&o.accumFreq, "accum-freq", 1, "micro-batches per step (GradCache: a step takes batch-size × accum-freq rows per rank and equals the full-batch step; OpenCLIP's --accum-freq gives the logit scale and bias accum-freq times their gradient)")
	fs.Float64Var(&o.lr, "lr", 2e-3, "peak learning rate")
	fs.Float64Var(&o.wd, "wd", 0.1, "AdamW weight decay (not on biases and the logit scale)")
	fs.Float64Var(&o.beta1, "beta1", 0.9, "AdamW beta1")
	fs.Float64Var(&o.beta2, "beta2", 0.98, "AdamW beta2")
	fs.Float64Var(&o.eps, "eps", 1e-6, "AdamW epsilon")
	fs.IntVar(&o.warmup, "warmup", 20, "linear warmup steps of the cosine schedule")
	fs.IntVar(&o.epochs, "epochs", 12, "passes over the training rows")
	fs.Uint64Var(&o.seed, "seed", 0, "seed of the initial weights and the shuffles")
	fs.StringVar(&o.dtype, "dtype", "float32", "element type: float32 (fast) or float64")
	fs.StringVar(&o.precision, "precision", "fp32", "the loss's GEMMs, as OpenCLIP's --precision: fp32, or amp_bf16 (operands rounded to bfloat16, fp32 sums; float32 only)")

	fs.StringVar(&o.resume, "resume", "", "checkpoint to resume from, or 'latest' for LOGS/checkpoints/latest.ckpt")
	fs.StringVar(&o.logs, "logs", "logs", "directory for metrics.csv, curves.png and checkpoints/ (empty: none)")
	fs.StringVar(&o.summary, "summary", "", "write a JSON summary of the run to this file")
	fs.IntVar(&o.saveFrequency, "save-frequency", 1, "write a checkpoint every this many epochs (0: only at the end)")
	fs.IntVar(&o.valFrequency, "val-frequency", 1, "evaluate held-out recall every this many epochs")
	fs.IntVar(&o.logEvery, "log-every", 0, "print a line every this many steps (0: about 20 lines per run)")
	fs.StringVar(&o.progress, "progress", "auto", "progress display: lines, bar, or auto (a bar when stderr is a terminal)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags start with -)", fs.Arg(0))
	}
	return o, o.validate()
}

// validate checks what can be checked before starting MPI, so that every
// rank fails at once on a mistyped flag.
func (o *options) validate() error {
	if _, err := clip.ParseHead(o.head); err != nil {
		return err
	}
	if _, err := loss.ParseAlgorithm(o.algo); err != nil {
		return err
	}
	if _, err := loss.ParseSigLipImpl(o.distImpl); err != nil {
		return err
	}
	if o.dtype != "float32" && o.dtype != "float64" {
		return fmt.Errorf("--dtype %q: want float32 or float64", o.dtype)
	}
	if p, err := loss.ParsePrecision(o.precision); err != nil {
		return fmt.Errorf("--precision: %w", err)
	} else if p == loss.AMPBF16 && o.dtype != "float32" {
		return fmt.Errorf("--precision amp_bf16 needs --dtype float32")
	}
	switch o.progress {
	case "auto", "bar", "lines":
	default:
		return fmt.Errorf("--progress %q: want auto, bar or lines", o.progress)
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"embed-dim", o.embedDim}, {"hidden", o.hidden}, {"batch-size", o.batchSize}, {"accum-freq", o.accumFreq},
		{"epochs", o.epochs}, {"val-frequency", o.valFrequency}, {"val-size", o.valSize}, {"synth-rows", o.synthRows}} {
		if f.v < 1 {
			return fmt.Errorf("--%s must be positive, not %d", f.name, f.v)
		}
	}
	if o.saveFrequency < 0 || o.warmup < 0 || o.logEvery < 0 {
		return errors.New("--save-frequency, --warmup and --log-every must not be negative")
	}
	if !(o.lr > 0) || o.wd < 0 || o.beta1 < 0 || o.beta1 >= 1 || o.beta2 < 0 || o.beta2 >= 1 || !(o.eps > 0) {
		return errors.New("want --lr > 0, --wd ≥ 0, --beta1 and --beta2 in [0, 1), --eps > 0")
	}
	return nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "gen-data" {
		if err := genData(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "train gen-data:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "export" {
		if err := exportHeads(os.Args[2:]); err != nil && !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "train export:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && subcommands[os.Args[1]] != nil {
		os.Exit(mpiCommand(os.Args[1], subcommands[os.Args[1]], os.Args[2:]))
	}
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		// Every rank parses the same flags and fails the same way.
		fmt.Fprintln(os.Stderr, "train:", err)
		os.Exit(2)
	}
	comm, err := mpi.World()
	if err != nil {
		fmt.Fprintln(os.Stderr, "train:", err)
		os.Exit(1)
	}
	// A panic on one rank ends the job, naming the rank.
	defer mpi.AbortOnPanic(comm)
	code := 0
	// The launch environment (Slurm, Open MPI, PMI, torchrun variables)
	// must agree with MPI; it also sets the BLAS threads per rank. A rank
	// whose environment disagrees may be the only one: the others are
	// already on their way into run's first collective, which this rank
	// must not skip for the exit-status all-reduce below (a mismatched
	// collective: the job hung). It ends the job.
	env, err := slurm.Init(comm, blas.SetThreads)
	if err != nil {
		mpi.Fail(comm, fmt.Errorf("train: %w", err))
		os.Exit(1) // only if comm's FailHook returns
	}
	launch = env.String()
	if o.dtype == "float64" {
		err = run[float64](comm, o)
	} else {
		err = run[float32](comm, o)
	}
	if err != nil {
		if reporter(err) == comm.Rank() {
			fmt.Fprintf(os.Stderr, "train: %v\n", err)
		}
		code = 1
	}
	// Every rank agrees on the exit status, so that mpirun sees a failure
	// whichever rank met it.
	v := []float64{float64(code)}
	if err := comm.AllreduceF64(mpi.Max, v, v); err != nil {
		mpi.Fail(comm, fmt.Errorf("train: agreeing on the exit status: %w", err))
		os.Exit(1)
	}
	if err := mpi.Finalize(); err != nil {
		fmt.Fprintln(os.Stderr, "train:", err)
	}
	os.Exit(int(v[0]))
}

// reporter returns the rank that prints err, an error that run returned on
// every rank alike (run's errors are decided together; what only some ranks
// meet ends the job through mpi.Fail instead): the rank that met it, for a
// *clip.RankError, else rank 0.
func reporter(err error) int {
	var re *clip.RankError
	if errors.As(err, &re) {
		return re.Rank
	}
	return 0
}

// gemmPath names what computes the loss's GEMMs at the precision: the
// BLAS, or the bf16 GEMM's path.
func gemmPath(precision string) string {
	if p, _ := loss.ParsePrecision(precision); p == loss.AMPBF16 {
		return blas.BF16Path()
	}
	return blas.Backend()
}

// launch describes the launch environment rank 0 was started in.
var launch string

// newLoss returns the loss the flags ask for: any type with ClipLoss's
// two methods plugs in here. With auto the algorithm (or dist_impl) is
// chosen here, for --batch-size rows per rank, the same on every rank;
// o.algo or o.distImpl then names the choice and the description says why.
func newLoss[T blas.Float](comm mpi.Comm, dim int, o *options) (clip.Loss[T], string, error) {
	if o.siglip {
		impl, err := loss.ParseSigLipImpl(o.distImpl)
		if err != nil {
			return nil, "", err
		}
		prec, _ := loss.ParsePrecision(o.precision) // validated
		opt, ch, err := loss.ResolveSigLip[T](comm, loss.SigLipOptions{Impl: impl, Tile: o.tile, Precision: prec}, o.batchSize, dim)
		if err != nil {
			return nil, "", err
		}
		o.distImpl = opt.Impl.String()
		desc := fmt.Sprintf("SigLipLoss, dist_impl %s", opt.Impl)
		if impl == loss.SigLipAuto {
			desc += "\nloss: " + ch.Reason
		}
		return loss.NewSigLipLoss[T](comm, dim, opt), desc, nil
	}
	algo, err := loss.ParseAlgorithm(o.algo)
	if err != nil {
		return nil, "", err
	}
	prec, _ := loss.ParsePrecision(o.precision) // validated
	opt := loss.ClipOptions{LocalLoss: o.localLoss, GatherWithGrad: o.gatherWithGrad, Algorithm: algo, Tile: o.tile, Precision: prec}
	opt, ch, err := loss.ResolveClip[T](comm, opt, o.batchSize, dim)
	if err != nil {
		return nil, "", err
	}
	o.algo = opt.Algorithm.String()
	desc := fmt.Sprintf("ClipLoss %s (local_loss=%v, gather_with_grad=%v), algorithm %s", opt.Mode(), o.localLoss, o.gatherWithGrad, opt.Algorithm)
	if algo == loss.Auto {
		desc += "\nloss: " + ch.Reason
	}
	return loss.NewClipLoss[T](comm, dim, opt), desc, nil
}

// maxSynthMemory bounds the bytes of a synthetic training set that every
// rank generates once and keeps (a larger one is generated row by row as
// the steps read it).
const maxSynthMemory = 256 << 20

// data opens the training and held-out sets and loads this rank's block of
// the held-out rows; the trainer reads the training rows it needs itself.
func data(comm mpi.Comm, o *options) (train clip.Source, val *clip.Pairs, desc string, err error) {
	var tsrc, vsrc clip.Source
	tlo, thi, vlo, vhi := 0, 0, 0, 0
	if o.trainData == "" {
		tsrc = clip.NewSynthetic(o.synth, 0, o.synthRows)
		vsrc = clip.NewSynthetic(o.synth, o.synthRows, o.valSize)
		thi, vhi = o.synthRows, o.valSize
		if o.valData != "" {
			return nil, nil, "", fmt.Errorf("--val-data needs --train-data")
		}
	} else {
		src, err := clip.OpenNpy(o.trainData)
		if err = clip.Agree(comm, err); err != nil {
			return nil, nil, "", err
		}
		tsrc, thi = src, src.Rows()
		if o.valData != "" {
			v, err := clip.OpenNpy(o.valData)
			if err == nil && (v.ImageDim() != src.ImageDim() || v.TextDim() != src.TextDim()) {
				err = fmt.Errorf("%w: the held-out set %s has image and text widths %d and %d, the training set %s %d and %d",
					clip.ErrData, v, v.ImageDim(), v.TextDim(), src, src.ImageDim(), src.TextDim())
			}
			if err = clip.Agree(comm, err); err != nil {
				return nil, nil, "", err
			}
			vsrc, vhi = v, v.Rows()
		} else {
			// Each rank checks the rows of the files it opened; they agree
			// before any rank goes on to LoadShard's collectives, so that a
			// rank that sees other files cannot leave the others waiting.
			if o.valSize < 1 || o.valSize >= src.Rows() {
				err = fmt.Errorf("%w: --val-size %d must be in [1, %d) to hold out rows of %s", clip.ErrData, o.valSize, src.Rows(), o.trainData)
			}
			if err = clip.Agree(comm, err); err != nil {
				return nil, nil, "", err
			}
			vsrc = src
			thi = src.Rows() - o.valSize
			vlo, vhi = thi, src.Rows()
		}
	}
	train = clip.Range(tsrc, tlo, thi)
	reads := "each rank reads its rows of each global batch"
	if syn, ok := tsrc.(*clip.Synthetic); ok && int64(thi-tlo)*int64(syn.ImageDim()+syn.TextDim())*4 <= maxSynthMemory {
		// Generating a synthetic row costs microseconds, more than a step
		// spends on it: every rank generates the set once and keeps it.
		img, txt := make([]float32, (thi-tlo)*syn.ImageDim()), make([]float32, (thi-tlo)*syn.TextDim())
		if err := syn.Read(img, txt, tlo, thi); err != nil {
			return nil, nil, "", err
		}
		train = clip.NewMemory(img, txt, syn.ImageDim(), syn.TextDim())
		reads = "generated once, in memory on every rank"
	}
	if val, err = clip.LoadShard(comm, vsrc, vlo, vhi); err != nil {
		return nil, nil, "", err
	}
	at := func(src clip.Source, lo, hi int) string {
		if s, ok := src.(*clip.Synthetic); ok {
			lo, hi = lo+s.Start(), hi+s.Start()
		}
		return fmt.Sprintf("%s rows %d..%d", src, lo, hi-1)
	}
	desc = fmt.Sprintf("data: train %s: %d pairs (%s)\ndata: held out %s: %d pairs, %d on rank 0",
		at(tsrc, tlo, thi), train.Rows(), reads, at(vsrc, vlo, vhi), val.Total, val.Rows)
	return train, val, desc, nil
}

func run[T blas.Float](comm mpi.Comm, o *options) error {
	start := time.Now()
	w, rank := comm.Size(), comm.Rank()
	say := func(format string, a ...any) {
		if rank == 0 {
			fmt.Printf(format, a...)
		}
	}
	say("clipmpi train: %d ranks, %s, precision %s (bf16 GEMM: %s)\n", w, o.dtype, o.precision, blas.BF16Path())
	say("backends: blas=%s (threads per rank %d), mpi=%v, GOMAXPROCS=%d\n", blas.Backend(), blas.Threads(), mpi.Enabled, runtime.GOMAXPROCS(0))
	say("launch: %s\n", launch)

	train, val, dataDesc, err := data(comm, o)
	if err != nil {
		return err
	}
	say("%s\n", dataDesc)

	head, err := clip.ParseHead(o.head)
	if err != nil {
		return err
	}
	mc := clip.ModelConfig{
		ImageDim: train.ImageDim(), TextDim: train.TextDim(), EmbedDim: o.embedDim,
		Head: head, Hidden: o.hidden, InitLogitScale: clip.ClipInitLogitScale,
	}
	if o.siglip {
		mc.InitLogitScale = clip.SigLipInitLogitScale
		mc.LogitBias, mc.InitLogitBias = true, clip.SigLipInitLogitBias
	}
	if !math.IsNaN(o.initLogitScale) {
		mc.InitLogitScale = o.initLogitScale
	}
	if !math.IsNaN(o.initLogitBias) {
		mc.LogitBias, mc.InitLogitBias = true, o.initLogitBias
	}
	lossFn, lossDesc, err := newLoss[T](comm, o.embedDim, o)
	if err != nil {
		return err
	}
	var ckptDir, resumePath string
	if o.logs != "" {
		ckptDir = filepath.Join(o.logs, "checkpoints")
	}
	batch := o.batchSize
	if o.resume != "" {
		resumePath = o.resume
		if resumePath == "latest" {
			if o.logs == "" {
				return errors.New("--resume latest needs --logs")
			}
			resumePath = filepath.Join(ckptDir, "latest.ckpt")
		}
		// The run continues with the checkpoint's global batch, on any
		// number of ranks that divides it.
		info, err := clip.ReadCheckpointInfo(comm, resumePath)
		if err != nil {
			return err
		}
		if batch, err = info.BatchSizeFor(w, o.accumFreq); err != nil {
			return err
		}
		if info.World != w || batch != o.batchSize {
			say("resume: %s was written by %d ranks × batch size %d × accum %d = global batch %d; here %d ranks × batch size %d × accum %d\n",
				resumePath, info.World, info.BatchSize, info.AccumFreq, info.GlobalBatch, w, batch, o.accumFreq)
		}
	}
	cfg := clip.Config{
		Model:     mc,
		Optim:     clip.OptimConfig{LR: o.lr, WD: o.wd, Beta1: o.beta1, Beta2: o.beta2, Eps: o.eps, Warmup: o.warmup},
		BatchSize: batch, AccumFreq: o.accumFreq, Epochs: o.epochs, Seed: o.seed,
	}
	tr, err := clip.NewTrainer(comm, cfg, lossFn, train)
	if err != nil {
		return err
	}
	m := tr.Model()
	shape := fmt.Sprintf("%d→%d", mc.ImageDim, mc.EmbedDim)
	tshape := fmt.Sprintf("%d→%d", mc.TextDim, mc.EmbedDim)
	if head == clip.MLP {
		shape = fmt.Sprintf("%d→%d→%d", mc.ImageDim, mc.Hidden, mc.EmbedDim)
		tshape = fmt.Sprintf("%d→%d→%d", mc.TextDim, mc.Hidden, mc.EmbedDim)
	}
	bias := "no logit bias"
	if mc.LogitBias {
		bias = fmt.Sprintf("logit bias %g", mc.InitLogitBias)
	}
	say("model: %s heads, image %s, text %s, %d parameters; logit scale %.2f (log %.4f), %s\n",
		head, shape, tshape, len(m.Params()), math.Exp(mc.InitLogitScale), mc.InitLogitScale, bias)
	say("loss: %s\n", lossDesc)
	say("optim: AdamW lr %g wd %g betas (%g, %g) eps %g; cosine schedule, %d warmup steps\n", o.lr, o.wd, o.beta1, o.beta2, o.eps, o.warmup)
	say("steps: %d ranks × %d rows × accum %d = global batch %d; %d epochs × %d steps = %d steps\n",
		w, batch, o.accumFreq, tr.GlobalBatch(), o.epochs, tr.StepsPerEpoch(), tr.TotalSteps())

	if o.logs != "" {
		var err error
		if rank == 0 {
			err = os.MkdirAll(ckptDir, 0o755)
		}
		if err = clip.Agree(comm, err); err != nil {
			return err
		}
	}
	resumeAt := -1
	if resumePath != "" {
		if err := tr.Load(resumePath); err != nil {
			return err
		}
		say("resumed from %s at step %d of %d\n", resumePath, tr.Steps(), tr.TotalSteps())
		resumeAt = tr.Steps()
	}
	// Rank 0 appends every row to LOGS/metrics.csv as it comes.
	mt := &metrics{}
	if rank == 0 && o.logs != "" {
		var note string
		mt, note, err = openMetrics(filepath.Join(o.logs, "metrics.csv"), resumeAt)
		if note != "" {
			say("%s\n", note)
		}
	}
	if err = clip.Agree(comm, err); err != nil {
		return err
	}
	defer mt.close()

	before, err := tr.Evaluate(val)
	if err != nil {
		return err
	}
	say("eval  step %5d  %v  (chance R@1 %.4f)\n", tr.Steps(), before, 1/float64(val.Total))
	mt.addEval(tr.Steps(), tr.Steps()/tr.StepsPerEpoch(), before)

	logEvery := o.logEvery
	if logEvery < 1 {
		logEvery = max(1, tr.TotalSteps()/20)
	}
	disp := newDisplay(rank == 0, o.progress, tr.TotalSteps(), tr.Steps())
	var (
		last       clip.StepStats
		trainTime  time.Duration
		trainSteps int
		winStart   = time.Now()
		winSteps   int
	)
	after := before
	firstStep := tr.Steps()
	for tr.Steps() < tr.TotalSteps() {
		t0 := time.Now()
		st, err := tr.Step()
		if err != nil {
			return err
		}
		dt := time.Since(t0)
		trainTime += dt
		trainSteps++
		winSteps++
		last = st
		sps := float64(tr.GlobalBatch()*trainSteps) / trainTime.Seconds()
		mt.addStep(st, sps)
		if st.Step%logEvery == 0 || st.Step == tr.TotalSteps() {
			win := float64(tr.GlobalBatch()*winSteps) / time.Since(winStart).Seconds()
			eta := time.Duration(float64(tr.TotalSteps()-st.Step) * float64(trainTime) / float64(trainSteps))
			disp.line(fmt.Sprintf("step %5d/%d  epoch %2d  loss %.4f  lr %.2e  scale %6.2f  %8.0f samples/s  ETA %s",
				st.Step, tr.TotalSteps(), st.Epoch+1, st.Loss, st.LR, st.Scale, win, fmtDuration(eta)))
			winStart, winSteps = time.Now(), 0
		}
		disp.step(st)
		epochEnd := st.Step%tr.StepsPerEpoch() == 0
		epoch := st.Step / tr.StepsPerEpoch()
		if epochEnd && (epoch%o.valFrequency == 0 || st.Step == tr.TotalSteps()) {
			if after, err = tr.Evaluate(val); err != nil {
				return err
			}
			mt.addEval(st.Step, epoch, after)
			disp.line(fmt.Sprintf("eval  step %5d  %v", st.Step, after))
		}
		if ckptDir != "" && epochEnd && ((o.saveFrequency > 0 && epoch%o.saveFrequency == 0) || st.Step == tr.TotalSteps()) {
			for _, name := range []string{fmt.Sprintf("epoch_%d.ckpt", epoch), "latest.ckpt"} {
				if err := tr.Save(filepath.Join(ckptDir, name)); err != nil {
					return err
				}
			}
		}
	}
	disp.done()
	if firstStep == tr.TotalSteps() {
		say("nothing to do: the checkpoint is at the last step\n")
	}

	// Outputs, written by rank 0; every rank learns whether that worked.
	wall := time.Since(start).Seconds()
	sum := summary{
		Steps: tr.TotalSteps(), StepsRun: trainSteps, GlobalBatch: tr.GlobalBatch(), World: w,
		WallS: wall, TrainS: trainTime.Seconds(), Epochs: o.epochs,
		RecallI2T1: after.ImageToText.R[0], RecallT2I1: after.TextToImage.R[0],
		RecallI2T1Before: before.ImageToText.R[0], RecallT2I1Before: before.TextToImage.R[0],
		RecallI2T: after.ImageToText.R, RecallT2I: after.TextToImage.R,
		ValMetrics: after.Map(), ValMetricsBefore: before.Map(),
		ValRows: val.Total, TrainRows: train.Rows(), ChanceAt1: 1 / float64(val.Total),
		Head: head.String(), Mode: loss.ClipOptions{LocalLoss: o.localLoss, GatherWithGrad: o.gatherWithGrad}.Mode(),
		Algorithm: o.algo, DType: o.dtype, Precision: o.precision, GemmPath: gemmPath(o.precision), BLAS: blas.Backend(), BLASThreads: blas.Threads(), MPI: mpi.Enabled,
		LogitScale: m.Logit().Scale,
	}
	if trainSteps > 0 {
		sum.FinalLoss = &last.Loss
	}
	if trainTime > 0 {
		sum.SamplesPerS = float64(tr.GlobalBatch()*trainSteps) / trainTime.Seconds()
	}
	var outErr error
	if rank == 0 {
		outErr = writeOutputs(o, mt, &sum)
	}
	if err := clip.Agree(comm, outErr); err != nil {
		return err
	}
	if rank == 0 {
		printMetrics(before, after)
	}
	if trainSteps > 0 {
		say("final loss %.4f, logit scale %.2f; %d steps of %d pairs in %.1f s of training (%.0f samples/s), %.1f s in all\n",
			last.Loss, sum.LogitScale, trainSteps, sum.GlobalBatch, sum.TrainS, sum.SamplesPerS, sum.WallS)
	}
	var wrote []string
	if o.logs != "" {
		wrote = append(wrote, filepath.Join(o.logs, "metrics.csv"), filepath.Join(o.logs, "curves.png"), filepath.Join(ckptDir, "latest.ckpt"))
	}
	if o.summary != "" {
		wrote = append(wrote, o.summary)
	}
	if len(wrote) > 0 {
		say("wrote %s\n", strings.Join(wrote, ", "))
	}
	return nil
}

func fmtDuration(d time.Duration) string {
	s := int(d.Round(time.Second).Seconds())
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}
