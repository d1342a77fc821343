package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nlpodyssey/safetensors"

	"github.com/clipmpi/clipmpi/clip"
	"github.com/clipmpi/clipmpi/mpi"
)

// exportHeads implements `train export --resume CKPT --out FILE`: the
// checkpoint's model as a safetensors file (see exportTensors), in one
// process.
func exportHeads(args []string) error {
	fs := flag.NewFlagSet("train export", flag.ContinueOnError)
	resume := fs.String("resume", "", "checkpoint to export (a .ckpt file)")
	out := fs.String("out", "heads.safetensors", "the safetensors file to write")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: train export --resume CKPT [--out heads.safetensors]\n\n"+
			"Writes the checkpoint's projection heads, logit scale and bias as safetensors with\n"+
			"OpenCLIP-style names; the metadata holds the model configuration.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *resume == "" || fs.NArg() > 0 {
		fs.Usage()
		return errors.New("want --resume CKPT and no other arguments")
	}
	m, info, err := clip.LoadModel[float64](mpi.Self(), *resume)
	if err != nil {
		return err
	}
	tensors, meta, err := exportTensors(m, info, *resume)
	if err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(*out), "."+filepath.Base(*out)+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	err = safetensors.SerializeToWriter(tensors, meta, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, *out)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", *out, err)
	}
	names := make([]string, 0, len(tensors))
	for _, name := range exportOrder(m) {
		t := tensors[name]
		names = append(names, fmt.Sprintf("%s %v", name, t.shape))
	}
	fmt.Printf("wrote %s: %s, %s heads, step %d of %d; %s\n", *out, info.DType, info.Model.Head, info.Step, info.TotalSteps, strings.Join(names, ", "))
	return nil
}

// tensor is a safetensors.View of a little-endian tensor: unlike
// safetensors.NewTensorView, it allows the 0-dimensional tensors (one
// element) that OpenCLIP's logit_scale and logit_bias are.
type tensor struct {
	dtype safetensors.DType
	shape []uint64
	data  []byte
}

func (t tensor) DType() safetensors.DType { return t.dtype }
func (t tensor) Shape() []uint64          { return t.shape }
func (t tensor) Data() []byte             { return t.data }
func (t tensor) DataLen() uint64          { return uint64(len(t.data)) }

// exportName maps the model's tensor names to OpenCLIP's style: the image
// head under visual.proj, the text head under text_projection, the logit
// scale and bias as they are.
func exportName(name string) string {
	switch {
	case strings.HasPrefix(name, "image.proj."):
		return "visual.proj." + strings.TrimPrefix(name, "image.proj.")
	case strings.HasPrefix(name, "image."):
		return "visual.proj." + strings.TrimPrefix(name, "image.")
	case strings.HasPrefix(name, "text.proj."):
		return "text_projection." + strings.TrimPrefix(name, "text.proj.")
	case strings.HasPrefix(name, "text."):
		return "text_projection." + strings.TrimPrefix(name, "text.")
	}
	return name
}

// exportOrder returns the exported names in the model's order.
func exportOrder[T float32 | float64](m *clip.Model[T]) []string {
	var names []string
	for _, p := range m.Layout() {
		names = append(names, exportName(p.Name))
	}
	return names
}

// exportTensors returns the model's tensors, named and laid out for
// PyTorch, and the file's metadata.
//
// Names: a linear head is visual.proj.{weight,bias} and
// text_projection.{weight,bias}; an MLP head visual.proj.fc1.{weight,bias},
// visual.proj.fc2.{weight,bias} and the same under text_projection.
// Weights are [out, in], torch.nn.Linear's layout (the transpose of the
// [in, out] that clip stores and that OpenCLIP's bias-free proj
// parameters use: proj = weight.T), so that a head loads into nn.Linear
// (weight, bias) as is. logit_scale is the log scale, as OpenCLIP stores it
// (the scale is its exp), and logit_bias the bias, both 0-dimensional.
// The dtype is the checkpoint's (F32 or F64), little-endian.
//
// The metadata (string to string, safetensors' __metadata__) holds
// "format": "pt", "clipmpi.model_config" (the clip.ModelConfig as JSON:
// widths, head, hidden width, initial logit scale and bias),
// "clipmpi.dtype", "clipmpi.step", "clipmpi.total_steps",
// "clipmpi.global_batch" and "clipmpi.checkpoint".
func exportTensors(m *clip.Model[float64], info clip.CheckpointInfo, path string) (map[string]tensor, map[string]string, error) {
	dt, size := safetensors.F32, 4
	if info.DType == "float64" {
		dt, size = safetensors.F64, 8
	}
	out := map[string]tensor{}
	for _, p := range m.Layout() {
		v := m.Params()[p.Offset : p.Offset+p.Size()]
		shape := make([]uint64, len(p.Shape))
		vals := v
		if len(p.Shape) == 2 {
			in, o := p.Shape[0], p.Shape[1]
			shape[0], shape[1] = uint64(o), uint64(in)
			vals = make([]float64, len(v))
			for i := range in {
				for j := range o {
					vals[j*in+i] = v[i*o+j]
				}
			}
		} else {
			for i, s := range p.Shape {
				shape[i] = uint64(s)
			}
			if p.Name == "logit_scale" || p.Name == "logit_bias" {
				shape = []uint64{}
			}
		}
		data := make([]byte, 0, size*len(vals))
		for _, x := range vals {
			if size == 4 {
				data = binary.LittleEndian.AppendUint32(data, math.Float32bits(float32(x)))
			} else {
				data = binary.LittleEndian.AppendUint64(data, math.Float64bits(x))
			}
		}
		out[exportName(p.Name)] = tensor{dtype: dt, shape: shape, data: data}
	}
	cfg, err := json.Marshal(info.Model)
	if err != nil {
		return nil, nil, err
	}
	meta := map[string]string{
		"format":               "pt",
		"clipmpi.model_config": string(cfg),
		"clipmpi.dtype":        info.DType,
		"clipmpi.step":         strconv.Itoa(info.Step),
		"clipmpi.total_steps":  strconv.Itoa(info.TotalSteps),
		"clipmpi.global_batch": strconv.Itoa(info.GlobalBatch),
		"clipmpi.checkpoint":   filepath.Base(path),
	}
	return out, meta, nil
}
