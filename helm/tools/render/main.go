// Command render renders a Helm chart's templates the way `helm template` does, for the
// chart tests of coder-reinit-guard on machines without Helm. It uses Go's text/template
// with sprig (what Helm uses) plus the Helm-specific functions this chart relies on:
// include, tpl, required, toYaml, fromYaml, toJson, .Files.Get, .Capabilities, lookup
// (always empty, as in `helm template`). Values files merge over values.yaml like -f.
//
// Usage: render [-notes] [-release NAME] [-namespace NS] CHART_DIR [VALUES_FILE...]
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

type chartMeta struct {
	Name       string `yaml:"name"`
	Version    string `yaml:"version"`
	AppVersion string `yaml:"appVersion"`
}

// merge deep-merges src into dst (maps merge, everything else replaces), as Helm does
// for successive values files.
func merge(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				dst[k] = merge(dm, sm)
				continue
			}
		}
		if v == nil {
			delete(dst, k) // null removes a default, as in Helm
			continue
		}
		dst[k] = v
	}
	return dst
}

func readYAML(path string) (map[string]interface{}, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

func toYAML(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

type files struct{ root string }

func (f files) Get(name string) string {
	b, err := os.ReadFile(filepath.Join(f.root, name))
	if err != nil {
		return ""
	}
	return string(b)
}

func main() {
	notes := flag.Bool("notes", false, "render NOTES.txt instead of the manifests")
	release := flag.String("release", "coder-reinit-guard", "release name")
	namespace := flag.String("namespace", "coder", "release namespace")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: render [-notes] [-release NAME] [-namespace NS] CHART_DIR [VALUES_FILE...]")
		os.Exit(2)
	}
	dir := flag.Arg(0)
	if err := run(dir, flag.Args()[1:], *release, *namespace, *notes); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func run(dir string, valueFiles []string, release, namespace string, notes bool) error {
	var meta chartMeta
	b, err := os.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(b, &meta); err != nil {
		return err
	}
	values, err := readYAML(filepath.Join(dir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, f := range valueFiles {
		v, err := readYAML(f)
		if err != nil {
			return err
		}
		values = merge(values, v)
	}

	root := template.New("root").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		_ = yaml.Unmarshal([]byte(s), &m)
		return m
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, errors.New(msg)
		}
		return v, nil
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	funcs["lookup"] = func(string, string, string, string) map[string]interface{} { return map[string]interface{}{} }
	root.Funcs(funcs)

	paths, err := filepath.Glob(filepath.Join(dir, "templates", "*"))
	if err != nil {
		return err
	}
	sort.Strings(paths)
	var names []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		name := meta.Name + "/templates/" + filepath.Base(p)
		if _, err := root.New(name).Parse(string(b)); err != nil {
			return err
		}
		names = append(names, name)
	}

	data := map[string]interface{}{
		"Values":  values,
		"Release": map[string]interface{}{"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1},
		"Chart":   map[string]interface{}{"Name": meta.Name, "Version": meta.Version, "AppVersion": meta.AppVersion},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.30.0", "Major": "1", "Minor": "30"},
			"APIVersions": apiVersions{"monitoring.coreos.com/v1", "policy/v1", "networking.k8s.io/v1"},
		},
		"Files": files{dir},
	}

	var out strings.Builder
	for _, name := range names {
		base := filepath.Base(name)
		isNotes := base == "NOTES.txt"
		if strings.HasPrefix(base, "_") || isNotes != notes {
			continue
		}
		data["Template"] = map[string]interface{}{"Name": name, "BasePath": meta.Name + "/templates"}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return err
		}
		// Helm prints missing values as empty, not "<no value>".
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if notes {
			out.WriteString(text)
			continue
		}
		if strings.TrimSpace(text) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", name, strings.Trim(text, "\n"))
	}
	fmt.Print(out.String())
	return nil
}

// apiVersions answers .Capabilities.APIVersions.Has like Helm's list.
type apiVersions []string

func (a apiVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}
