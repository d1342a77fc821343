package main

import (
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// writePlot draws the training loss and the held-out recall against the
// step, side by side, as a PNG.
func writePlot(path string, m *metrics) error {
	var loss plotter.XYs
	var rec [4]plotter.XYs // i2t@1, t2i@1, i2t@5, t2i@5
	for _, r := range m.rows {
		if r.split == "train" {
			loss = append(loss, plotter.XY{X: float64(r.step), Y: r.loss})
			continue
		}
		i2t, t2i := r.val.ImageToText.R, r.val.TextToImage.R
		for i, v := range []float64{i2t[0], t2i[0], i2t[1], t2i[1]} {
			rec[i] = append(rec[i], plotter.XY{X: float64(r.step), Y: v})
		}
	}
	pl := plot.New()
	pl.Title.Text = "training loss"
	pl.X.Label.Text = "step"
	pl.Y.Label.Text = "loss (global batch)"
	pl.X.Min = 0
	pl.Add(plotter.NewGrid())
	if len(loss) > 0 {
		l, err := plotter.NewLine(loss)
		if err != nil {
			return err
		}
		l.Color = color.RGBA{R: 31, G: 119, B: 180, A: 255}
		l.Width = vg.Points(1.5)
		pl.Add(l)
	}
	pr := plot.New()
	pr.Title.Text = "held-out recall"
	pr.X.Label.Text = "step"
	pr.Y.Label.Text = "recall"
	pr.Y.Min, pr.Y.Max = 0, 1
	pr.X.Min = 0
	pr.Add(plotter.NewGrid())
	pr.Legend.Top = false
	pr.Legend.Left = false
	if len(rec[0]) > 0 {
		if err := plotutil.AddLinePoints(pr,
			"image→text R@1", rec[0], "text→image R@1", rec[1],
			"image→text R@5", rec[2], "text→image R@5", rec[3]); err != nil {
			return err
		}
	}
	const w, h = 11 * vg.Inch, 4 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 8, PadTop: vg.Millimeter * 2,
		PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4}
	cs := plot.Align([][]*plot.Plot{{pl, pr}}, tiles, dc)
	pl.Draw(cs[0][0])
	pr.Draw(cs[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}
