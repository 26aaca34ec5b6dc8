module bmctl.lab/cmd

go 1.24
