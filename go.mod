module github.com/clipmpi/clipmpi

go 1.26

require (
	github.com/emer/empi v1.0.17 // indirect
	gonum.org/v1/gonum v0.17.0 // indirect
	gonum.org/v1/netlib v0.0.0-20190313105609-8cb42192e0e0 // indirect
)
