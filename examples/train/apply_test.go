package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/clipmpi/clipmpi/clip"
	"github.com/clipmpi/clipmpi/mpi"
)

// trainTiny runs the program for a few steps on the synthetic set with
// extra flags and returns the final checkpoint.
func trainTiny(t *testing.T, dir string, extra ...string) string {
	t.Helper()
	args := append([]string{"--synth-rows", "1024", "--val-size", "100", "--batch-size", "128", "--epochs", "2",
		"--embed-dim", "8", "--hidden", "16", "--progress", "lines", "--logs", dir}, extra...)
	if out, err := program(args...).CombinedOutput(); err != nil {
		t.Fatalf("train %v: %v\n%s", args, err, out)
	}
	return filepath.Join(dir, "checkpoints", "latest.ckpt")
}

// stTensor is a tensor as the test's own safetensors reader found it.
type stTensor struct {
	dtype string
	shape []int
	vals  []float64
}

// readSafetensors reads a safetensors file by the format's definition: an
// 8-byte little-endian header length N, N bytes of JSON mapping each
// tensor's name to its dtype, shape and [begin, end) offsets into the
// data that follows (and "__metadata__" to a map of strings), the data
// little-endian in C order. It checks that the tensors tile the data.
func readSafetensors(t *testing.T, path string) (map[string]stTensor, map[string]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 8 {
		t.Fatalf("%s: %d bytes", path, len(b))
	}
	n := binary.LittleEndian.Uint64(b)
	if n > uint64(len(b)-8) || n%8 != 0 {
		t.Fatalf("%s: header length %d in %d bytes (the writer pads it to 8)", path, n, len(b))
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
		t.Fatalf("%s: header: %v", path, err)
	}
	data := b[8+n:]
	var meta map[string]string
	out := map[string]stTensor{}
	type span struct{ lo, hi int }
	var spans []span
	for name, raw := range hdr {
		if name == "__metadata__" {
			if err := json.Unmarshal(raw, &meta); err != nil {
				t.Fatalf("__metadata__: %v", err)
			}
			continue
		}
		var info struct {
			DType   string `json:"dtype"`
			Shape   []int  `json:"shape"`
			Offsets [2]int `json:"data_offsets"`
		}
		if err := json.Unmarshal(raw, &info); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		size := map[string]int{"F32": 4, "F64": 8}[info.DType]
		count := 1
		for _, s := range info.Shape {
			count *= s
		}
		lo, hi := info.Offsets[0], info.Offsets[1]
		if size == 0 || lo < 0 || hi > len(data) || hi-lo != count*size {
			t.Fatalf("%s: dtype %s, shape %v, offsets %v in %d bytes of data", name, info.DType, info.Shape, info.Offsets, len(data))
		}
		spans = append(spans, span{lo, hi})
		v := make([]float64, count)
		for i := range v {
			if size == 4 {
				v[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(data[lo+4*i:])))
			} else {
				v[i] = math.Float64frombits(binary.LittleEndian.Uint64(data[lo+8*i:]))
			}
		}
		out[name] = stTensor{dtype: info.DType, shape: info.Shape, vals: v}
	}
	slices.SortFunc(spans, func(a, b span) int { return a.lo - b.lo })
	end := 0
	for _, s := range spans {
		if s.lo != end {
			t.Fatalf("the tensors do not tile the data: a gap or overlap at byte %d", end)
		}
		end = s.hi
	}
	if end != len(data) {
		t.Fatalf("the tensors cover %d of %d bytes of data", end, len(data))
	}
	return out, meta
}

// TestExportRoundTrip: export writes every tensor of the checkpoint under
// its OpenCLIP-style name, weights as [out, in] (torch.nn.Linear), the
// logit scale and bias as 0-dimensional tensors, in the run's dtype, with
// the model configuration in the metadata; read back by the test's own
// reader, the values equal the checkpoint's exactly.
func TestExportRoundTrip(t *testing.T) {
	for _, c := range []struct {
		name  string
		flags []string
		want  map[string]string // exported name → clip's name
		dtype string
	}{
		{"linear", nil, map[string]string{
			"visual.proj.weight": "image.proj.weight", "visual.proj.bias": "image.proj.bias",
			"text_projection.weight": "text.proj.weight", "text_projection.bias": "text.proj.bias",
			"logit_scale": "logit_scale"}, "F32"},
		{"mlp siglip float64", []string{"--head", "mlp", "--siglip", "--dtype", "float64"}, map[string]string{
			"visual.proj.fc1.weight": "image.fc1.weight", "visual.proj.fc1.bias": "image.fc1.bias",
			"visual.proj.fc2.weight": "image.fc2.weight", "visual.proj.fc2.bias": "image.fc2.bias",
			"text_projection.fc1.weight": "text.fc1.weight", "text_projection.fc1.bias": "text.fc1.bias",
			"text_projection.fc2.weight": "text.fc2.weight", "text_projection.fc2.bias": "text.fc2.bias",
			"logit_scale": "logit_scale", "logit_bias": "logit_bias"}, "F64"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			ckpt := trainTiny(t, dir, c.flags...)
			st := filepath.Join(dir, "heads.safetensors")
			if out, err := program("export", "--resume", ckpt, "--out", st).CombinedOutput(); err != nil {
				t.Fatalf("export: %v\n%s", err, out)
			}
			got, meta := readSafetensors(t, st)
			m, info, err := clip.LoadModel[float64](mpi.Self(), ckpt)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				names := make([]string, 0, len(got))
				for k := range got {
					names = append(names, k)
				}
				t.Fatalf("tensors %v, want %d", names, len(c.want))
			}
			for name, src := range c.want {
				g, ok := got[name]
				if !ok {
					t.Fatalf("no tensor %q", name)
				}
				var p clip.Param
				for _, q := range m.Layout() {
					if q.Name == src {
						p = q
					}
				}
				v := m.Params()[p.Offset : p.Offset+p.Size()]
				want := slices.Clone(v)
				var shape []int
				switch {
				case len(p.Shape) == 2: // clip stores [in, out]; export [out, in]
					in, o := p.Shape[0], p.Shape[1]
					shape = []int{o, in}
					for i := range in {
						for j := range o {
							want[j*in+i] = v[i*o+j]
						}
					}
				case src == "logit_scale" || src == "logit_bias":
					shape = []int{}
				default:
					shape = p.Shape
				}
				if g.dtype != c.dtype || !slices.Equal(g.shape, shape) || !slices.Equal(g.vals, want) {
					t.Errorf("%s: %s %v %v, want %s %v %v (checkpoint's %s)", name, g.dtype, g.shape, g.vals, c.dtype, shape, want, src)
				}
			}
			var mc clip.ModelConfig
			if err := json.Unmarshal([]byte(meta["clipmpi.model_config"]), &mc); err != nil || mc != info.Model {
				t.Errorf("metadata model config %q (%v), want %+v", meta["clipmpi.model_config"], err, info.Model)
			}
			if meta["format"] != "pt" || meta["clipmpi.step"] != strconv.Itoa(info.Step) || meta["clipmpi.dtype"] != info.DType {
				t.Errorf("metadata %v", meta)
			}
		})
	}
}

// TestEmbed: embed writes, for every row of the input files, the features
// Model.EncodeImage and EncodeText give for it, as float32 of unit norm,
// whatever rows it encodes at a time; a NaN row and a file of other width
// are errors naming them.
func TestEmbed(t *testing.T) {
	dir := t.TempDir()
	ckpt := trainTiny(t, dir, "--head", "mlp")
	m, _, err := clip.LoadModel[float32](mpi.Self(), ckpt)
	if err != nil {
		t.Fatal(err)
	}
	mc := m.Config()
	const n = 300
	src := clip.NewSynthetic(clip.DefaultSynthetic, 5000, n)
	img, txt := make([]float32, n*mc.ImageDim), make([]float32, n*mc.TextDim)
	src.Read(img, txt, 0, n)
	ip, tp := filepath.Join(dir, "x.npy"), filepath.Join(dir, "y.npy")
	if err := clip.WriteNpy(ip, img, n, mc.ImageDim, false); err != nil {
		t.Fatal(err)
	}
	if err := clip.WriteNpy(tp, txt, n, mc.TextDim, true); err != nil { // float16
		t.Fatal(err)
	}
	half := make([]float32, len(txt)) // what the float16 file holds
	ta, _ := clip.OpenNpyArray(tp)
	ta.Read(half, 0, n)
	wantI, wantT := make([]float32, n*mc.EmbedDim), make([]float32, n*mc.EmbedDim)
	m.EncodeImage(wantI, img)
	m.EncodeText(wantT, half)
	for _, chunk := range []string{"4096", "77"} {
		out := filepath.Join(dir, "emb-"+chunk)
		if b, err := program("embed", "--resume", ckpt, "--image-data", ip, "--text-data", tp, "--out", out, "--chunk", chunk).CombinedOutput(); err != nil {
			t.Fatalf("embed: %v\n%s", err, b)
		}
		for _, f := range []struct {
			name string
			want []float32
		}{{"image_emb.npy", wantI}, {"text_emb.npy", wantT}} {
			a, err := clip.OpenNpyArray(filepath.Join(out, f.name))
			if err != nil {
				t.Fatal(err)
			}
			if a.Rows() != n || a.Dim() != mc.EmbedDim {
				t.Fatalf("%s: [%d, %d], want [%d, %d]", f.name, a.Rows(), a.Dim(), n, mc.EmbedDim)
			}
			got := make([]float32, n*mc.EmbedDim)
			if err := a.Read(got, 0, n); err != nil {
				t.Fatal(err)
			}
			// The same GEMMs on the same rows: equal, up to how the GEMM
			// blocks rows (chunks of 77 rows against one of 300).
			var d, norm float64
			for i := range got {
				d = max(d, math.Abs(float64(got[i]-f.want[i])))
			}
			for j := range mc.EmbedDim {
				norm += float64(got[j]) * float64(got[j])
			}
			if d > 1e-6 || math.Abs(norm-1) > 1e-5 {
				t.Errorf("chunk %s: %s differs from Model.Encode by up to %g; row 0 has norm² %v", chunk, f.name, d, norm)
			}
		}
	}
	// Errors.
	bad := slices.Clone(img)
	bad[7*mc.ImageDim+3] = float32(math.NaN())
	bp := filepath.Join(dir, "bad.npy")
	clip.WriteNpy(bp, bad, n, mc.ImageDim, false)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--image-data", bp}, "bad.npy: row 7 holds NaN (column 3)"},
		{[]string{"--image-data", tp}, fmt.Sprintf("y.npy has rows of %d values, the model's image head takes %d", mc.TextDim, mc.ImageDim)},
		{[]string{"--text-data", filepath.Join(dir, "none.npy")}, "no such file"},
	} {
		b, err := program(append([]string{"embed", "--resume", ckpt, "--out", filepath.Join(dir, "e")}, c.args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(b), c.want) {
			t.Errorf("embed %v: %v\n%s\nwant an error saying %q", c.args, err, b, c.want)
		}
	}
}

// TestEvalAgrees: eval of a run's final checkpoint on its held-out set
// gives the metrics of the run's last evaluation (metrics.csv), exactly:
// the same model, rows and computation.
func TestEvalAgrees(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if b, err := program("gen-data", "--out", data, "--rows", "2048", "--val-size", "300", "--shards", "2", "--dtype", "float16").CombinedOutput(); err != nil {
		t.Fatalf("gen-data: %v\n%s", err, b)
	}
	logs := filepath.Join(dir, "logs")
	ckpt := trainTiny(t, logs, "--train-data", filepath.Join(data, "train"), "--val-data", filepath.Join(data, "val"))
	sum := filepath.Join(dir, "eval.json")
	b, err := program("eval", "--resume", ckpt, "--val-data", filepath.Join(data, "val"), "--summary", sum).CombinedOutput()
	if err != nil {
		t.Fatalf("eval: %v\n%s", err, b)
	}
	var got evalSummary
	js, _ := os.ReadFile(sum)
	if err := json.Unmarshal(js, &got); err != nil {
		t.Fatal(err)
	}
	hdr, recs := readCSV(t, filepath.Join(logs, "metrics.csv"))
	var last []string
	for _, r := range recs {
		if r[0] == "val" {
			last = r
		}
	}
	// 2048 training rows, global batch 128, 2 epochs: 32 steps.
	if got.ValRows != 300 || got.Step != 32 || last == nil || last[1] != "32" {
		t.Fatalf("eval of step %d on %d rows; the run's last evaluation %v", got.Step, got.ValRows, last)
	}
	for i, name := range hdr {
		k := slices.Index(clip.MetricNames, name)
		if k < 0 {
			continue
		}
		want, _ := strconv.ParseFloat(last[i], 64)
		if g, ok := got.Metrics[name]; !ok || g != want {
			t.Errorf("%s: eval %v, the run's last evaluation %v", name, g, want)
		}
	}
	if !strings.Contains(string(b), "image_to_text_R@1") {
		t.Errorf("eval printed no metrics:\n%s", b)
	}
}
