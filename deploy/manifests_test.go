package deploy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/certfleet/certfleet/events"
	"github.com/certfleet/certfleet/ratelimit"
	"github.com/certfleet/certfleet/seal"
)

// The tests run in deploy/; the module root is its parent.
const (
	root       = ".."
	modulePath = "github.com/certfleet/certfleet"
	baseDir    = "kubernetes/base"
)

// ---------------------------------------------------------------------------
// What the Go sources say: the CERTFLEET_* variables each binary reads and
// the Prometheus metrics the code registers.

var (
	readersOnce sync.Once
	readers     map[string]map[string]bool // binary -> env names
	readersErr  error
)

// binaries are the images certfleet ships; the container image's last path
// element names the binary (ghcr.io/certfleet/issuer-worker -> issuer-worker).
var binaries = []string{"issuer-worker", "scheduler", "certfleet"}

// envReaders returns, per binary, the CERTFLEET_* names it reads: every
// string literal that is exactly such a name in the non-test Go files of
// cmd/<binary>, plus the names behind the identifiers it uses from this
// module's packages: a constant holding such a name (seal.EnvKeyring) or a
// function whose body mentions one (seal.LoadKeyringEnv). Only that one level
// is followed, so a package that merely sits in the import graph (the
// scheduler links seal without reading the keyring) adds nothing.
func envReaders(t *testing.T) map[string]map[string]bool {
	t.Helper()
	readersOnce.Do(func() {
		readers = map[string]map[string]bool{}
		for _, b := range binaries {
			names, err := envNamesOf("cmd/" + b)
			if err != nil {
				readersErr = err
				return
			}
			if len(names) == 0 {
				readersErr = fmt.Errorf("cmd/%s: no CERTFLEET_* literal found; has the configuration moved?", b)
				return
			}
			readers[b] = names
		}
	})
	if readersErr != nil {
		t.Fatal(readersErr)
	}
	return readers
}

var envNameRE = regexp.MustCompile(`^CERTFLEET_[A-Z0-9_]+$`)

func envLiteral(n ast.Node) (string, bool) {
	lit, ok := n.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil && envNameRE.MatchString(s)
}

func envNamesOf(cmdDir string) (map[string]bool, error) {
	files, err := parseGoDir(filepath.Join(root, cmdDir))
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	pkgs := map[string]map[string][]string{}
	for _, f := range files {
		imported := map[string]string{} // local name -> directory in the module
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			rel, ok := strings.CutPrefix(p, modulePath+"/")
			if !ok {
				continue
			}
			local := path.Base(rel)
			if imp.Name != nil {
				local = imp.Name.Name
			}
			imported[local] = rel
		}
		var inspectErr error
		ast.Inspect(f, func(n ast.Node) bool {
			if s, ok := envLiteral(n); ok {
				names[s] = true
			}
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			x, ok := sel.X.(*ast.Ident)
			if !ok || imported[x.Name] == "" {
				return true
			}
			dir := imported[x.Name]
			if pkgs[dir] == nil {
				refs, err := pkgEnvRefs(dir)
				if err != nil {
					inspectErr = err
					return false
				}
				pkgs[dir] = refs
			}
			for _, s := range pkgs[dir][sel.Sel.Name] {
				names[s] = true
			}
			return true
		})
		if inspectErr != nil {
			return nil, inspectErr
		}
	}
	return names, nil
}

// pkgEnvRefs maps a package's constants and functions to the CERTFLEET_*
// names they hold or mention.
func pkgEnvRefs(dir string) (map[string][]string, error) {
	files, err := parseGoDir(filepath.Join(root, dir))
	if err != nil {
		return nil, err
	}
	refs := map[string][]string{}
	consts := map[string]string{}
	for _, f := range files {
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, v := range vs.Values {
					if s, ok := envLiteral(v); ok && i < len(vs.Names) {
						consts[vs.Names[i].Name] = s
						refs[vs.Names[i].Name] = []string{s}
					}
				}
			}
		}
	}
	for _, f := range files {
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Recv != nil || fd.Body == nil {
				continue
			}
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				if s, ok := envLiteral(n); ok {
					refs[fd.Name.Name] = append(refs[fd.Name.Name], s)
				}
				if id, ok := n.(*ast.Ident); ok && consts[id.Name] != "" {
					refs[fd.Name.Name] = append(refs[fd.Name.Name], consts[id.Name])
				}
				return true
			})
		}
	}
	return refs, nil
}

// parseGoDir parses the non-test Go files of one directory.
func parseGoDir(dir string) ([]*ast.File, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []*ast.File
	fset := token.NewFileSet()
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || !strings.HasSuffix(n, ".go") || strings.HasSuffix(n, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, n), nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

// metricInfo is one registered Prometheus metric.
type metricInfo struct {
	histogram bool
	labels    []string
}

var (
	metricsOnce sync.Once
	metricsSet  map[string]metricInfo
	metricsErr  error
)

// goMetrics finds every prometheus.New{Counter,Gauge,Histogram,Summary}[Vec]
// call in the module's non-test Go files whose options name a certfleet_
// metric, with its label names.
func goMetrics(t *testing.T) map[string]metricInfo {
	t.Helper()
	metricsOnce.Do(func() {
		metricsSet = map[string]metricInfo{}
		metricsErr = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() {
				return nil
			}
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "deploy" || n == "testdata" || n == "vendor") {
				return filepath.SkipDir
			}
			files, err := parseGoDir(path)
			if err != nil {
				return err
			}
			for _, f := range files {
				ast.Inspect(f, func(n ast.Node) bool {
					call, ok := n.(*ast.CallExpr)
					if !ok || len(call.Args) == 0 {
						return true
					}
					sel, ok := call.Fun.(*ast.SelectorExpr)
					if !ok || !strings.HasPrefix(sel.Sel.Name, "New") {
						return true
					}
					if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "prometheus" {
						return true
					}
					opts, ok := call.Args[0].(*ast.CompositeLit)
					if !ok {
						return true
					}
					name := stringField(opts, "Name")
					if !strings.HasPrefix(name, "certfleet_") {
						return true
					}
					info := metricInfo{histogram: strings.HasPrefix(sel.Sel.Name, "NewHistogram")}
					if len(call.Args) > 1 {
						if ls, ok := call.Args[1].(*ast.CompositeLit); ok {
							for _, e := range ls.Elts {
								if lit, ok := e.(*ast.BasicLit); ok {
									s, _ := strconv.Unquote(lit.Value)
									info.labels = append(info.labels, s)
								}
							}
						}
					}
					metricsSet[name] = info
					return true
				})
			}
			return nil
		})
		if metricsErr == nil && len(metricsSet) == 0 {
			metricsErr = errors.New("no certfleet_ metric found in the Go sources")
		}
	})
	if metricsErr != nil {
		t.Fatal(metricsErr)
	}
	return metricsSet
}

func stringField(lit *ast.CompositeLit, field string) string {
	for _, e := range lit.Elts {
		kv, ok := e.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		if k, ok := kv.Key.(*ast.Ident); ok && k.Name == field {
			if v, ok := kv.Value.(*ast.BasicLit); ok && v.Kind == token.STRING {
				s, _ := strconv.Unquote(v.Value)
				return s
			}
		}
	}
	return ""
}

// ---------------------------------------------------------------------------
// Decoding the Kubernetes manifests.

// kustomization is the part of kustomize's Kustomization this repository
// uses; decoding is strict, so a misspelt or unsupported field fails.
type kustomization struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors,omitempty"`
		IncludeTemplates bool              `json:"includeTemplates,omitempty"`
	} `json:"labels,omitempty"`
	Resources []string `json:"resources,omitempty"`
	Images    []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
	Patches []struct {
		Path   string `json:"path,omitempty"`
		Patch  string `json:"patch,omitempty"`
		Target *struct {
			Kind string `json:"kind,omitempty"`
			Name string `json:"name,omitempty"`
		} `json:"target,omitempty"`
	} `json:"patches,omitempty"`
}

// newObject returns an empty typed object for apiVersion/kind, or an error
// for a kind this deployment does not use (or the wrong API version of it).
func newObject(apiVersion, kind string) (any, error) {
	want := map[string]string{
		"Namespace": "v1", "ServiceAccount": "v1", "ConfigMap": "v1", "Secret": "v1", "Service": "v1",
		"Deployment": "apps/v1", "Job": "batch/v1", "HorizontalPodAutoscaler": "autoscaling/v2",
		"PodDisruptionBudget": "policy/v1", "NetworkPolicy": "networking.k8s.io/v1",
	}
	v, ok := want[kind]
	if !ok {
		return nil, fmt.Errorf("kind %q is not one the test knows (add it to newObject)", kind)
	}
	if apiVersion != v {
		return nil, fmt.Errorf("%s: apiVersion %q, want %q", kind, apiVersion, v)
	}
	switch kind {
	case "Namespace":
		return &corev1.Namespace{}, nil
	case "ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "Secret":
		return &corev1.Secret{}, nil
	case "Service":
		return &corev1.Service{}, nil
	case "Deployment":
		return &appsv1.Deployment{}, nil
	case "Job":
		return &batchv1.Job{}, nil
	case "HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}, nil
	case "PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	default:
		return &networkingv1.NetworkPolicy{}, nil
	}
}

// unmarshalStrict decodes JSON the way the API server's strict field
// validation does: field names case-sensitively (encoding/json would accept
// "targetport"), unknown and duplicate fields are errors.
func unmarshalStrict(j []byte, v any) error {
	strict, err := kjson.UnmarshalStrict(j, v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// unmarshalYAMLStrict is unmarshalStrict for a YAML document.
func unmarshalYAMLStrict(y []byte, v any) error {
	j, err := sigsyaml.YAMLToJSONStrict(y)
	if err != nil {
		return err
	}
	return unmarshalStrict(j, v)
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeManifests strictly decodes every document of a YAML file into the
// Kubernetes API types. Documents holding only comments are skipped.
func decodeManifests(data []byte) ([]any, error) {
	var out []any
	for i, doc := range docSep.Split(string(data), -1) {
		j, err := sigsyaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if string(j) == "null" {
			continue
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(j, &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		obj, err := newObject(tm.APIVersion, tm.Kind)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if err := unmarshalStrict(j, obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, tm.Kind, err)
		}
		if metaOf(obj).Name == "" {
			return nil, fmt.Errorf("document %d (%s): no metadata.name", i+1, tm.Kind)
		}
		out = append(out, obj)
	}
	return out, nil
}

func metaOf(obj any) *metav1.ObjectMeta {
	return reflect.ValueOf(obj).Elem().FieldByName("ObjectMeta").Addr().Interface().(*metav1.ObjectMeta)
}

func kindOf(obj any) string { return reflect.TypeOf(obj).Elem().Name() }

// manifests is a decoded kustomize directory.
type manifests struct {
	kust    kustomization
	files   map[string][]any // file -> objects
	objects map[string]any   // "Kind/name" -> object
}

func (m *manifests) add(file string, obj any) error {
	key := kindOf(obj) + "/" + metaOf(obj).Name
	if _, dup := m.objects[key]; dup {
		return fmt.Errorf("%s: %s defined twice", file, key)
	}
	m.objects[key] = obj
	m.files[file] = append(m.files[file], obj)
	return nil
}

func loadDir(t *testing.T, dir string) *manifests {
	t.Helper()
	m := &manifests{files: map[string][]any{}, objects: map[string]any{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || !isYAML(n) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if n == "kustomization.yaml" {
			if err := unmarshalYAMLStrict(data, &m.kust); err != nil {
				t.Fatalf("%s/%s: %v", dir, n, err)
			}
			continue
		}
		objs, err := decodeManifests(data)
		if err != nil {
			t.Fatalf("%s/%s: %v", dir, n, err)
		}
		for _, o := range objs {
			if err := m.add(n, o); err != nil {
				t.Fatal(err)
			}
		}
	}
	return m
}

func isYAML(name string) bool {
	return strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")
}

func objectsOf[T any](m *manifests) []*T {
	var out []*T
	keys := make([]string, 0, len(m.objects))
	for k := range m.objects {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if o, ok := m.objects[k].(*T); ok {
			out = append(out, o)
		}
	}
	return out
}

// workload is a Deployment's or Job's pod template.
type workload struct {
	ref      string // "Deployment/name"
	long     bool   // a Deployment (serves probes, gets SIGTERM on rollouts)
	replicas *int32
	pod      *corev1.PodTemplateSpec
}

func workloads(m *manifests) []workload {
	var out []workload
	for _, d := range objectsOf[appsv1.Deployment](m) {
		out = append(out, workload{"Deployment/" + d.Name, true, d.Spec.Replicas, &d.Spec.Template})
	}
	for _, j := range objectsOf[batchv1.Job](m) {
		out = append(out, workload{"Job/" + j.Name, false, nil, &j.Spec.Template})
	}
	return out
}

// binaryOf names the certfleet binary a container runs, from its image.
func binaryOf(c corev1.Container) (string, error) {
	img := c.Image
	if i := strings.Index(img, "@"); i >= 0 {
		img = img[:i]
	}
	if i := strings.LastIndex(img, ":"); i > strings.LastIndex(img, "/") {
		img = img[:i]
	}
	b := img[strings.LastIndex(img, "/")+1:]
	if !slices.Contains(binaries, b) {
		return "", fmt.Errorf("container %s: image %q is not a certfleet image (want .../%s)", c.Name, c.Image, strings.Join(binaries, ", .../"))
	}
	return b, nil
}

// ---------------------------------------------------------------------------
// Checks of the base. Each returns every problem it finds, so the negative
// tests can break a manifest in memory and see the check complain.

type envVar struct {
	value  string // "" when it comes from a Secret or the downward API
	source string
}

// containerEnv resolves the environment a container gets, checking that
// every ConfigMap, Secret and key it references exists in the base.
func containerEnv(m *manifests, ref string, c corev1.Container) (map[string]envVar, []error) {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s container %s: %s", ref, c.Name, fmt.Sprintf(format, a...)))
	}
	env := map[string]envVar{}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm, ok := m.objects["ConfigMap/"+ef.ConfigMapRef.Name].(*corev1.ConfigMap)
			if !ok {
				bad("envFrom configMapRef %q: no such ConfigMap in the base", ef.ConfigMapRef.Name)
				continue
			}
			for k, v := range cm.Data {
				env[ef.Prefix+k] = envVar{v, "ConfigMap/" + cm.Name}
			}
		case ef.SecretRef != nil:
			s, ok := m.objects["Secret/"+ef.SecretRef.Name].(*corev1.Secret)
			if !ok {
				bad("envFrom secretRef %q: no such Secret in the base", ef.SecretRef.Name)
				continue
			}
			for _, k := range secretKeys(s) {
				env[ef.Prefix+k] = envVar{"", "Secret/" + s.Name}
			}
		default:
			bad("envFrom entry without configMapRef or secretRef")
		}
	}
	for _, e := range c.Env {
		v := envVar{e.Value, "env"}
		if vf := e.ValueFrom; vf != nil {
			switch {
			case vf.ConfigMapKeyRef != nil:
				cm, ok := m.objects["ConfigMap/"+vf.ConfigMapKeyRef.Name].(*corev1.ConfigMap)
				if !ok {
					bad("env %s: configMapKeyRef %q: no such ConfigMap in the base", e.Name, vf.ConfigMapKeyRef.Name)
					continue
				}
				val, ok := cm.Data[vf.ConfigMapKeyRef.Key]
				if !ok {
					bad("env %s: ConfigMap %s has no key %q", e.Name, cm.Name, vf.ConfigMapKeyRef.Key)
				}
				v = envVar{val, "ConfigMap/" + cm.Name}
			case vf.SecretKeyRef != nil:
				s, ok := m.objects["Secret/"+vf.SecretKeyRef.Name].(*corev1.Secret)
				if !ok {
					bad("env %s: secretKeyRef %q: no such Secret in the base", e.Name, vf.SecretKeyRef.Name)
					continue
				}
				if !slices.Contains(secretKeys(s), vf.SecretKeyRef.Key) {
					bad("env %s: Secret %s has no key %q", e.Name, s.Name, vf.SecretKeyRef.Key)
				}
				v = envVar{"", "Secret/" + s.Name}
			case vf.FieldRef != nil:
				v = envVar{"", "fieldRef " + vf.FieldRef.FieldPath}
			default:
				bad("env %s: unsupported valueFrom", e.Name)
			}
		}
		env[e.Name] = v
	}
	return env, errs
}

func secretKeys(s *corev1.Secret) []string {
	var keys []string
	for k := range s.StringData {
		keys = append(keys, k)
	}
	for k := range s.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func portByName(c corev1.Container, name string) (corev1.ContainerPort, bool) {
	for _, p := range c.Ports {
		if p.Name == name {
			return p, true
		}
	}
	return corev1.ContainerPort{}, false
}

// declared reports whether a probe's or Service's port (name or number) is
// one of the container's ports.
func declared(c corev1.Container, port intstr.IntOrString) bool {
	for _, p := range c.Ports {
		if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.ContainerPort == port.IntVal) {
			return true
		}
	}
	return false
}

// checkPods checks every container of every Deployment and Job: the env
// it gets (references, names its binary reads, listen addresses matching
// its ports), probes, grace period, security context, resources.
func checkPods(t *testing.T, m *manifests) []error {
	rd := envReaders(t)
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	for _, w := range workloads(m) {
		spec := w.pod.Spec
		if sa := spec.ServiceAccountName; sa != "" {
			if _, ok := m.objects["ServiceAccount/"+sa]; !ok {
				bad("%s: serviceAccountName %q: no such ServiceAccount in the base", w.ref, sa)
			}
		}
		psc := spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || (psc.RunAsUser != nil && *psc.RunAsUser == 0) {
			bad("%s: pod securityContext must set runAsNonRoot: true (and no runAsUser 0)", w.ref)
		}
		if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			bad("%s: pod securityContext.seccompProfile must be RuntimeDefault (Pod Security restricted)", w.ref)
		}
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			cref := w.ref + " container " + c.Name
			bin, err := binaryOf(c)
			if err != nil {
				bad("%s: %v", w.ref, err)
				continue
			}
			env, envErrs := containerEnv(m, w.ref, c)
			errs = append(errs, envErrs...)
			names := make([]string, 0, len(env))
			for n := range env {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				if !rd[bin][n] {
					bad("%s: env %s (from %s) is not read by %s (cmd/%s reads %s)", cref, n, env[n].source, bin, bin, strings.Join(sortedKeys(rd[bin]), ", "))
				}
			}
			sc := c.SecurityContext
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				bad("%s: securityContext.allowPrivilegeEscalation must be false", cref)
			}
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				bad("%s: securityContext.readOnlyRootFilesystem must be true", cref)
			}
			if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
				bad("%s: securityContext.capabilities must drop ALL and add none", cref)
			}
			if sc != nil && ((sc.RunAsUser != nil && *sc.RunAsUser == 0) || (sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot) || (sc.Privileged != nil && *sc.Privileged)) {
				bad("%s: securityContext runs as root or privileged", cref)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
				bad("%s: resources must request cpu and memory and limit memory", cref)
			}
			// Probes point at declared ports, at the paths the binaries serve.
			for _, p := range []struct {
				kind, path string
				probe      *corev1.Probe
			}{{"readinessProbe", "/readyz", c.ReadinessProbe}, {"livenessProbe", "/healthz", c.LivenessProbe}, {"startupProbe", "", c.StartupProbe}} {
				if p.probe == nil {
					if w.long && p.path != "" {
						bad("%s: no %s", cref, p.kind)
					}
					continue
				}
				g := p.probe.HTTPGet
				if g == nil {
					bad("%s: %s is not an httpGet", cref, p.kind)
					continue
				}
				if !declared(c, g.Port) {
					bad("%s: %s port %s is not a declared container port", cref, p.kind, g.Port.String())
				}
				if p.path != "" && g.Path != p.path {
					bad("%s: %s path %q, want %s", cref, p.kind, g.Path, p.path)
				}
			}
			if !w.long {
				continue
			}
			// The listen addresses must be reachable from outside the
			// container and match the named ports.
			for _, l := range []struct{ env, port string }{{"CERTFLEET_LISTEN", "metrics"}, {"CERTFLEET_HTTP01_LISTEN", "http01"}} {
				cp, hasPort := portByName(c, l.port)
				v, set := env[l.env]
				if !rd[bin][l.env] {
					if hasPort {
						bad("%s: port %q declared but %s does not read %s", cref, l.port, bin, l.env)
					}
					continue
				}
				if !set {
					if hasPort || l.port == "metrics" {
						bad("%s: %s is not set (the default binds 127.0.0.1, unreachable for probes and scrapes)", cref, l.env)
					}
					continue
				}
				host, port, err := net.SplitHostPort(v.value)
				if err != nil {
					bad("%s: %s=%q is not host:port", cref, l.env, v.value)
					continue
				}
				if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
					bad("%s: %s=%q listens on loopback only", cref, l.env, v.value)
				}
				if !hasPort {
					bad("%s: %s is set but no container port is named %q", cref, l.env, l.port)
				} else if strconv.Itoa(int(cp.ContainerPort)) != port {
					bad("%s: %s=%q but container port %q is %d", cref, l.env, v.value, l.port, cp.ContainerPort)
				}
			}
			// Grace period: longer than the binary's shutdown timeout plus
			// the preStop sleep, or SIGKILL cuts orders in flight.
			st, ok := env["CERTFLEET_SHUTDOWN_TIMEOUT"]
			if !ok {
				bad("%s: set CERTFLEET_SHUTDOWN_TIMEOUT explicitly so the grace period can be checked against it", cref)
				continue
			}
			d, err := time.ParseDuration(st.value)
			if err != nil {
				bad("%s: CERTFLEET_SHUTDOWN_TIMEOUT=%q: %v", cref, st.value, err)
				continue
			}
			if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
				d += time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
			}
			grace := int64(30) // the Kubernetes default
			if spec.TerminationGracePeriodSeconds != nil {
				grace = *spec.TerminationGracePeriodSeconds
			}
			if time.Duration(grace)*time.Second <= d {
				bad("%s: terminationGracePeriodSeconds %d is not longer than CERTFLEET_SHUTDOWN_TIMEOUT plus preStop (%v)", w.ref, grace, d)
			}
		}
	}
	return errs
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// selected returns the workloads whose pod labels sel matches.
func selected(m *manifests, sel labels.Selector) []workload {
	var out []workload
	for _, w := range workloads(m) {
		if sel.Matches(labels.Set(w.pod.Labels)) {
			out = append(out, w)
		}
	}
	return out
}

func asSelector(ls *metav1.LabelSelector) (labels.Selector, error) {
	if ls == nil || (len(ls.MatchLabels) == 0 && len(ls.MatchExpressions) == 0) {
		return nil, errors.New("empty selector (would select every pod)")
	}
	return metav1.LabelSelectorAsSelector(ls)
}

// checkSelectors: Deployments select their own pods, and spread/affinity
// selectors match them too.
func checkSelectors(m *manifests) []error {
	var errs []error
	for _, d := range objectsOf[appsv1.Deployment](m) {
		sel, err := asSelector(d.Spec.Selector)
		if err != nil {
			errs = append(errs, fmt.Errorf("Deployment/%s: selector: %v", d.Name, err))
			continue
		}
		if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			errs = append(errs, fmt.Errorf("Deployment/%s: selector %s does not match its pod labels", d.Name, sel))
		}
		var others []*metav1.LabelSelector
		for _, tsc := range d.Spec.Template.Spec.TopologySpreadConstraints {
			others = append(others, tsc.LabelSelector)
		}
		if a := d.Spec.Template.Spec.Affinity; a != nil && a.PodAntiAffinity != nil {
			for _, p := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
				others = append(others, p.PodAffinityTerm.LabelSelector)
			}
			for _, p := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
				others = append(others, p.LabelSelector)
			}
		}
		for _, o := range others {
			s, err := asSelector(o)
			if err != nil || !s.Matches(labels.Set(d.Spec.Template.Labels)) {
				errs = append(errs, fmt.Errorf("Deployment/%s: a topology spread or anti-affinity selector does not match its own pods", d.Name))
			}
		}
	}
	return errs
}

// checkServices: every Service selects a Deployment's pods and its
// targetPorts are ports of their containers; the HTTP-01 Service listens on
// port 80 and reaches the workers' http01 port.
func checkServices(m *manifests) []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	http01 := false
	for _, s := range objectsOf[corev1.Service](m) {
		if len(s.Spec.Selector) == 0 {
			bad("Service/%s: no selector", s.Name)
			continue
		}
		var ws []workload
		for _, w := range selected(m, labels.SelectorFromSet(s.Spec.Selector)) {
			if w.long {
				ws = append(ws, w)
			}
		}
		if len(ws) == 0 {
			bad("Service/%s: selector %v matches no Deployment's pods", s.Name, s.Spec.Selector)
			continue
		}
		if len(s.Spec.Ports) == 0 {
			bad("Service/%s: no ports", s.Name)
		}
		for _, p := range s.Spec.Ports {
			tp := p.TargetPort
			if tp.Type == intstr.Int && tp.IntVal == 0 {
				tp = intstr.FromInt32(p.Port) // targetPort defaults to port
			}
			for _, w := range ws {
				ok := false
				for _, c := range w.pod.Spec.Containers {
					if declared(c, tp) {
						ok = true
						if p.Port == 80 && tp.Type == intstr.String && tp.StrVal == "http01" {
							http01 = true
						}
					}
				}
				if !ok {
					bad("Service/%s port %d: targetPort %s is not a container port of %s", s.Name, p.Port, tp.String(), w.ref)
				}
			}
		}
	}
	if !http01 {
		bad("no Service exposes port 80 with targetPort http01 (the CA validates HTTP-01 on port 80)")
	}
	return errs
}

// checkAutoscaling: HPAs target existing Deployments that leave replicas to
// them; PDBs select exactly one Deployment and leave room for a disruption.
func checkAutoscaling(m *manifests) []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	for _, h := range objectsOf[autoscalingv2.HorizontalPodAutoscaler](m) {
		ref := h.Spec.ScaleTargetRef
		d, ok := m.objects["Deployment/"+ref.Name].(*appsv1.Deployment)
		if ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || !ok {
			bad("HorizontalPodAutoscaler/%s: scaleTargetRef %s %s/%s is not a Deployment of the base", h.Name, ref.APIVersion, ref.Kind, ref.Name)
			continue
		}
		if d.Spec.Replicas != nil {
			bad("HorizontalPodAutoscaler/%s: Deployment/%s sets spec.replicas; leave it to the autoscaler", h.Name, d.Name)
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 || *h.Spec.MinReplicas > h.Spec.MaxReplicas {
			bad("HorizontalPodAutoscaler/%s: want 2 <= minReplicas <= maxReplicas", h.Name)
		}
		for _, mt := range h.Spec.Metrics {
			if mt.Type == autoscalingv2.ResourceMetricSourceType && mt.Resource != nil {
				for _, c := range d.Spec.Template.Spec.Containers {
					if _, ok := c.Resources.Requests[mt.Resource.Name]; !ok {
						bad("HorizontalPodAutoscaler/%s: scales on %s but container %s requests none", h.Name, mt.Resource.Name, c.Name)
					}
				}
			}
		}
	}
	for _, p := range objectsOf[policyv1.PodDisruptionBudget](m) {
		sel, err := asSelector(p.Spec.Selector)
		if err != nil {
			bad("PodDisruptionBudget/%s: %v", p.Name, err)
			continue
		}
		ws := selected(m, sel)
		if len(ws) != 1 || !ws[0].long {
			bad("PodDisruptionBudget/%s: selects %d workloads, want exactly one Deployment", p.Name, len(ws))
			continue
		}
		if (p.Spec.MinAvailable == nil) == (p.Spec.MaxUnavailable == nil) {
			bad("PodDisruptionBudget/%s: set exactly one of minAvailable and maxUnavailable", p.Name)
		}
		if ma := p.Spec.MinAvailable; ma != nil && ma.Type == intstr.Int && ws[0].replicas != nil && ma.IntVal >= *ws[0].replicas {
			bad("PodDisruptionBudget/%s: minAvailable %d >= %s replicas %d blocks every drain", p.Name, ma.IntVal, ws[0].ref, *ws[0].replicas)
		}
	}
	// The scheduler runs twice, sharing the lease, under a PDB.
	for _, w := range workloads(m) {
		for _, c := range w.pod.Spec.Containers {
			if b, _ := binaryOf(c); b == "scheduler" && w.long && (w.replicas == nil || *w.replicas < 2) {
				bad("%s: the scheduler wants 2 replicas (leader and standby on the lease)", w.ref)
			}
		}
	}
	return errs
}

// checkNetworkPolicies: each policy selects pods of the base (or all of
// them), and the named ports its rules use exist on those pods.
func checkNetworkPolicies(m *manifests) []error {
	var errs []error
	for _, np := range objectsOf[networkingv1.NetworkPolicy](m) {
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			errs = append(errs, fmt.Errorf("NetworkPolicy/%s: %v", np.Name, err))
			continue
		}
		ws := selected(m, sel)
		if len(ws) == 0 {
			errs = append(errs, fmt.Errorf("NetworkPolicy/%s: podSelector %s matches no pod of the base", np.Name, sel))
			continue
		}
		var ports []networkingv1.NetworkPolicyPort
		for _, r := range np.Spec.Ingress {
			ports = append(ports, r.Ports...)
		}
		for _, p := range ports {
			if p.Port == nil || p.Port.Type != intstr.String {
				continue
			}
			for _, w := range ws {
				found := false
				for _, c := range w.pod.Spec.Containers {
					found = found || declared(c, *p.Port)
				}
				if !found {
					errs = append(errs, fmt.Errorf("NetworkPolicy/%s: ingress port %q is not a container port of %s", np.Name, p.Port.StrVal, w.ref))
				}
			}
		}
	}
	return errs
}

// checkKustomization: resources lists exactly the manifest files of the
// directory, and the namespace is the one the base creates.
func checkKustomization(m *manifests, dirFiles []string) []error {
	var errs []error
	seen := map[string]bool{}
	for _, r := range m.kust.Resources {
		if seen[r] {
			errs = append(errs, fmt.Errorf("kustomization.yaml: %s listed twice", r))
		}
		seen[r] = true
		if !slices.Contains(dirFiles, r) {
			errs = append(errs, fmt.Errorf("kustomization.yaml: resource %s is not a manifest in the directory", r))
		}
	}
	for _, f := range dirFiles {
		if !seen[f] {
			errs = append(errs, fmt.Errorf("kustomization.yaml: %s is in the directory but not in resources", f))
		}
	}
	if m.kust.APIVersion != "kustomize.config.k8s.io/v1beta1" || m.kust.Kind != "Kustomization" {
		errs = append(errs, fmt.Errorf("kustomization.yaml: apiVersion/kind %s/%s", m.kust.APIVersion, m.kust.Kind))
	}
	if _, ok := m.objects["Namespace/"+m.kust.Namespace]; !ok {
		errs = append(errs, fmt.Errorf("kustomization.yaml: namespace %q is not the Namespace the base defines", m.kust.Namespace))
	}
	for _, img := range m.kust.Images {
		used := false
		for _, w := range workloads(m) {
			for _, c := range w.pod.Spec.Containers {
				used = used || strings.HasPrefix(c.Image, img.Name+":") || c.Image == img.Name
			}
		}
		if !used {
			errs = append(errs, fmt.Errorf("kustomization.yaml: image %s is used by no container", img.Name))
		}
	}
	return errs
}

// outOfBandSecrets are the Secrets the base mounts but does not define: an
// operator creates them (deploy/README.md, "Secrets"), so no placeholder key
// ever ships in the base. Each with the keys the pods mount.
var outOfBandSecrets = map[string][]string{
	"certfleet-seal-keys":           {"keyring"},
	"certfleet-database":            {"ca.crt", "client.certfleet.crt", "client.certfleet.key"},
	"certfleet-kafka-issuer-worker": {"ca.crt", "password"},
	"certfleet-kafka-scheduler":     {"ca.crt", "password"},
}

// sealSecret is the keyring: only the issuer-workers may mount it.
const sealSecret = "certfleet-seal-keys"

// fileVars are the variables that name a file the binary reads; in the base
// each must be a file of a volume mounted into the container.
var fileVars = []string{"CERTFLEET_SEAL_KEYS_FILE", "CERTFLEET_KAFKA_TLS_CA", "CERTFLEET_KAFKA_TLS_CERT", "CERTFLEET_KAFKA_TLS_KEY",
	"CERTFLEET_KAFKA_SASL_PASSWORD_FILE", "CERTFLEET_ACME_TLS_CA", "CERTFLEET_LIMITS_FILE"}

// mountedFile reports whether path is a file a Secret or ConfigMap volume
// mounted into c provides (the key, or an item's path, under the mount).
func mountedFile(pod corev1.PodSpec, c corev1.Container, path string) bool {
	for _, vm := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(path, strings.TrimSuffix(vm.MountPath, "/")+"/")
		if !ok {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name != vm.Name {
				continue
			}
			var items []corev1.KeyToPath
			var keys []string
			switch {
			case v.Secret != nil:
				items, keys = v.Secret.Items, outOfBandSecrets[v.Secret.SecretName]
			case v.ConfigMap != nil:
				items = v.ConfigMap.Items
			default:
				continue
			}
			if len(items) == 0 && slices.Contains(keys, rel) {
				return true
			}
			for _, it := range items {
				if it.Path == rel {
					return true
				}
			}
		}
	}
	return false
}

// checkSecrets: the base defines no Secret; every Secret volume names an
// out-of-band Secret and its keys, is mounted read-only with no access for
// others, into pods whose fsGroup can read it; only the workers see the
// keyring, and they read it from a file, not the environment.
func checkSecrets(m *manifests) []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	for _, s := range objectsOf[corev1.Secret](m) {
		bad("Secret/%s is defined in the base: secrets are created out of band (deploy/README.md, \"Secrets\"), never shipped with a placeholder value", s.Name)
	}
	for _, w := range workloads(m) {
		spec := w.pod.Spec
		secretVolumes := map[string]string{} // volume -> Secret
		for _, v := range spec.Volumes {
			if v.Secret == nil {
				continue
			}
			secretVolumes[v.Name] = v.Secret.SecretName
			keys, ok := outOfBandSecrets[v.Secret.SecretName]
			if !ok {
				bad("%s: volume %s: Secret %q is not one deploy/README.md tells the operator to create", w.ref, v.Name, v.Secret.SecretName)
			}
			for _, it := range v.Secret.Items {
				if ok && !slices.Contains(keys, it.Key) {
					bad("%s: volume %s: Secret %s has no key %q (its keys: %s)", w.ref, v.Name, v.Secret.SecretName, it.Key, strings.Join(keys, ", "))
				}
				if it.Mode != nil && *it.Mode&^0o440 != 0 {
					bad("%s: volume %s item %s: mode %04o lets others read or anyone write (certfleet refuses it)", w.ref, v.Name, it.Key, *it.Mode)
				}
			}
			if mode := v.Secret.DefaultMode; mode == nil || *mode&^0o440 != 0 {
				shown := "unset (0644)"
				if mode != nil {
					shown = fmt.Sprintf("%04o", *mode)
				}
				bad("%s: volume %s: defaultMode %s: a secret file must not be readable by others (0400; certfleet refuses more)", w.ref, v.Name, shown)
			}
			if psc := spec.SecurityContext; psc == nil || psc.FSGroup == nil {
				bad("%s: mounts Secret %s but sets no pod securityContext.fsGroup: the root-owned 0400 files are unreadable for a non-root user", w.ref, v.Secret.SecretName)
			}
		}
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			cref := w.ref + " container " + c.Name
			bin, err := binaryOf(c)
			if err != nil {
				continue // reported by checkPods
			}
			for _, vm := range c.VolumeMounts {
				sec, ok := secretVolumes[vm.Name]
				if !ok {
					continue
				}
				if !vm.ReadOnly {
					bad("%s: volume %s (Secret %s) is not mounted read-only", cref, vm.Name, sec)
				}
				if sec == sealSecret && bin != "issuer-worker" {
					bad("%s: mounts Secret %s, which only the issuer-workers may see", cref, sec)
				}
			}
			env, _ := containerEnv(m, w.ref, c)
			for _, name := range fileVars {
				if v, ok := env[name]; ok && !mountedFile(spec, c, v.value) {
					bad("%s: %s=%s is not a file of any volume mounted into the container", cref, name, v.value)
				}
			}
			if _, ok := env[seal.EnvKeyring]; ok {
				bad("%s: %s puts the keyring in the environment (local use only): mount Secret %s and set CERTFLEET_SEAL_KEYS_FILE", cref, seal.EnvKeyring, sealSecret)
			}
			if bin == "issuer-worker" {
				if _, ok := env["CERTFLEET_SEAL_KEYS_FILE"]; !ok {
					bad("%s: CERTFLEET_SEAL_KEYS_FILE is not set: the worker needs the keyring, from a mounted file", cref)
				}
			}
			if u, ok := env["CERTFLEET_DATABASE_URL"]; ok {
				errs = append(errs, checkDatabaseURL(cref, u.value, spec, c)...)
			}
			if mech := env["CERTFLEET_KAFKA_SASL_MECHANISM"].value; mech != "" {
				if env["CERTFLEET_KAFKA_TLS"].value != "true" || env["CERTFLEET_KAFKA_INSECURE_SASL_PLAINTEXT"].value == "true" {
					bad("%s: SASL (%s) without TLS: set CERTFLEET_KAFKA_TLS=true (the credentials would cross the network in clear)", cref, mech)
				}
				for _, k := range []string{"CERTFLEET_KAFKA_SASL_USER", "CERTFLEET_KAFKA_SASL_PASSWORD_FILE"} {
					if env[k].value == "" {
						bad("%s: SASL (%s) without %s", cref, mech, k)
					}
				}
			}
		}
	}
	return errs
}

// checkDatabaseURL: a database URL in the base reaches a host that is not
// loopback, so it must be what db.Open accepts: sslmode=verify-full with
// sslrootcert, sslcert and sslkey together, each a mounted file.
func checkDatabaseURL(cref, raw string, pod corev1.PodSpec, c corev1.Container) []error {
	var errs []error
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return []error{fmt.Errorf("%s: CERTFLEET_DATABASE_URL is not a URL with a host", cref)}
	}
	q := u.Query()
	if q.Get("sslmode") != "verify-full" || q.Get("sslrootcert") == "" {
		errs = append(errs, fmt.Errorf("%s: CERTFLEET_DATABASE_URL needs sslmode=verify-full and sslrootcert (it has sslmode=%q): db.Open refuses anything less for a host that is not loopback", cref, q.Get("sslmode")))
	}
	if (q.Get("sslcert") == "") != (q.Get("sslkey") == "") {
		errs = append(errs, fmt.Errorf("%s: CERTFLEET_DATABASE_URL: sslcert and sslkey come together", cref))
	}
	if u.User != nil {
		if _, hasPassword := u.User.Password(); hasPassword {
			errs = append(errs, fmt.Errorf("%s: CERTFLEET_DATABASE_URL holds a password in a ConfigMap: use certificate authentication (sslcert, sslkey)", cref))
		}
	}
	for _, k := range []string{"sslrootcert", "sslcert", "sslkey"} {
		if f := q.Get(k); f != "" && !mountedFile(pod, c, f) {
			errs = append(errs, fmt.Errorf("%s: CERTFLEET_DATABASE_URL %s=%s is not a file of any volume mounted into the container", cref, k, f))
		}
	}
	return errs
}

// checkEgress: every Kafka broker and database port a workload is told to
// reach is allowed by an egress rule of the NetworkPolicies selecting it.
func checkEgress(m *manifests) []error {
	var errs []error
	for _, w := range workloads(m) {
		allowed := map[int32]bool{}
		restricted := false
		for _, np := range objectsOf[networkingv1.NetworkPolicy](m) {
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			if err != nil || !sel.Matches(labels.Set(w.pod.Labels)) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
				continue
			}
			restricted = true
			for _, r := range np.Spec.Egress {
				for _, p := range r.Ports {
					if p.Port != nil && p.Port.Type == intstr.Int {
						allowed[p.Port.IntVal] = true
					}
				}
			}
		}
		if !restricted {
			continue
		}
		for _, c := range w.pod.Spec.Containers {
			env, _ := containerEnv(m, w.ref, c)
			var targets []string
			for _, b := range strings.Split(env["CERTFLEET_KAFKA_BROKERS"].value, ",") {
				if b != "" {
					targets = append(targets, "Kafka broker "+b)
				}
			}
			if u, err := url.Parse(env["CERTFLEET_DATABASE_URL"].value); err == nil && u.Host != "" {
				targets = append(targets, "database "+u.Host)
			}
			for _, tg := range targets {
				addr := tg[strings.LastIndex(tg, " ")+1:]
				_, port, err := net.SplitHostPort(addr)
				n, perr := strconv.Atoi(port)
				if err != nil || perr != nil {
					errs = append(errs, fmt.Errorf("%s: %s has no port", w.ref, tg))
					continue
				}
				if !allowed[int32(n)] {
					errs = append(errs, fmt.Errorf("%s: no NetworkPolicy egress rule allows port %d (%s)", w.ref, n, tg))
				}
			}
		}
	}
	return errs
}

// checkProvisioning: a worker that creates topics creates them replicated
// (the base must not auto-provision with replication factor 1).
func checkProvisioning(m *manifests) []error {
	var errs []error
	for _, w := range workloads(m) {
		for _, c := range w.pod.Spec.Containers {
			env, _ := containerEnv(m, w.ref, c)
			if on, _ := strconv.ParseBool(env["CERTFLEET_PROVISION_TOPICS"].value); !on {
				continue
			}
			rf, isr := events.DefaultReplicationFactor, events.DefaultMinInsyncReplicas
			if v, ok := env["CERTFLEET_TOPIC_REPLICATION_FACTOR"]; ok {
				rf, _ = strconv.Atoi(v.value)
			}
			if v, ok := env["CERTFLEET_TOPIC_MIN_INSYNC_REPLICAS"]; ok {
				isr, _ = strconv.Atoi(v.value)
			}
			if rf < 3 || isr < 2 {
				errs = append(errs, fmt.Errorf("%s: provisions topics with replication factor %d and min.insync.replicas %d: production wants 3 and 2", w.ref, rf, isr))
			}
		}
	}
	return errs
}

func baseChecks(t *testing.T, m *manifests, dirFiles []string) []error {
	var errs []error
	errs = append(errs, checkPods(t, m)...)
	errs = append(errs, checkSelectors(m)...)
	errs = append(errs, checkServices(m)...)
	errs = append(errs, checkAutoscaling(m)...)
	errs = append(errs, checkNetworkPolicies(m)...)
	errs = append(errs, checkSecrets(m)...)
	errs = append(errs, checkEgress(m)...)
	errs = append(errs, checkProvisioning(m)...)
	errs = append(errs, checkKustomization(m, dirFiles)...)
	return errs
}

func manifestFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() && isYAML(e.Name()) && e.Name() != "kustomization.yaml" {
			out = append(out, e.Name())
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Kubernetes tests.

// TestManifestsDecode decodes every YAML file under kubernetes/ strictly
// with the Kubernetes API types (overlay patches included).
func TestManifestsDecode(t *testing.T) {
	n := 0
	err := filepath.WalkDir("kubernetes", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !isYAML(path) {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if d.Name() == "kustomization.yaml" {
			var k kustomization
			if err := unmarshalYAMLStrict(data, &k); err != nil {
				t.Errorf("%s: %v", path, err)
			}
			return nil
		}
		objs, err := decodeManifests(data)
		if err != nil {
			t.Errorf("%s: %v", path, err)
		}
		n += len(objs)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 15 {
		t.Errorf("decoded %d objects under kubernetes/, expected the whole base", n)
	}
}

func TestBase(t *testing.T) {
	m := loadDir(t, baseDir)
	for _, kind := range []string{"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Job",
		"HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "NetworkPolicy"} {
		found := false
		for k := range m.objects {
			found = found || strings.HasPrefix(k, kind+"/")
		}
		if !found {
			t.Errorf("the base defines no %s", kind)
		}
	}
	for _, err := range baseChecks(t, m, manifestFiles(t, baseDir)) {
		t.Error(err)
	}
}

// TestKustomizeBuild builds the base and every overlay with kustomize (or
// kubectl's), when one is installed, and decodes the output strictly: what
// `kubectl apply -k` would send. The base's output holds no Secret.
func TestKustomizeBuild(t *testing.T) {
	var build []string
	if p, err := exec.LookPath("kustomize"); err == nil {
		build = []string{p, "build"}
	} else if p, err := exec.LookPath("kubectl"); err == nil {
		build = []string{p, "kustomize"}
	} else {
		t.Skip("neither kustomize nor kubectl is installed; the other tests check the same files without it")
	}
	dirs, _ := filepath.Glob("kubernetes/overlays/*")
	for _, dir := range append([]string{baseDir}, dirs...) {
		out, err := exec.Command(build[0], append(build[1:], dir)...).CombinedOutput()
		if err != nil {
			t.Errorf("%s %s: %v\n%s", strings.Join(build, " "), dir, err, out)
			continue
		}
		objs, err := decodeManifests(out)
		if err != nil {
			t.Errorf("%s: built output: %v", dir, err)
		}
		for _, o := range objs {
			if kindOf(o) == "Secret" {
				t.Errorf("%s: builds Secret/%s: secrets are created out of band", dir, metaOf(o).Name)
			}
		}
		if len(objs) < 15 {
			t.Errorf("%s: built %d objects", dir, len(objs))
		}
	}
}

// TestSecretsDocumented: deploy/README.md tells the operator how to create
// every Secret the base mounts, with every key it mounts.
func TestSecretsDocumented(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range sortedKeys(outOfBandSecrets) {
		i := strings.Index(string(readme), "create secret generic "+name+" ")
		if i < 0 {
			t.Errorf("deploy/README.md has no `kubectl create secret generic %s` step", name)
			continue
		}
		cmd := string(readme[i:])
		if j := strings.Index(cmd, "\n\n"); j >= 0 {
			cmd = cmd[:j]
		}
		for _, key := range outOfBandSecrets[name] {
			if !strings.Contains(cmd, "--from-file="+key+"=") {
				t.Errorf("deploy/README.md: the %s step does not create key %s (--from-file=%s=...)", name, key, key)
			}
		}
	}
}

// TestOverlays: every overlay's resources and patches exist, and each patch
// (decoded strictly above) targets an object of the base.
func TestOverlays(t *testing.T) {
	base := loadDir(t, baseDir)
	dirs, _ := filepath.Glob("kubernetes/overlays/*")
	if len(dirs) == 0 {
		t.Fatal("no overlay under kubernetes/overlays: the example overlay ships with the base")
	}
	for _, dir := range dirs {
		o := loadDir(t, dir)
		for _, r := range o.kust.Resources {
			if _, err := os.Stat(filepath.Join(dir, r)); err != nil {
				t.Errorf("%s: resource %s: %v", dir, r, err)
			}
		}
		patched := map[string]bool{}
		for _, p := range o.kust.Patches {
			switch {
			case p.Path != "":
				patched[p.Path] = true
				for _, obj := range o.files[p.Path] {
					key := kindOf(obj) + "/" + metaOf(obj).Name
					if _, ok := base.objects[key]; !ok {
						t.Errorf("%s/%s: patches %s, which the base does not define", dir, p.Path, key)
					}
				}
				if _, ok := o.files[p.Path]; !ok {
					t.Errorf("%s: patch %s: no such manifest in the overlay", dir, p.Path)
				}
			case p.Patch != "":
				var meta struct {
					Kind     string            `json:"kind"`
					Metadata metav1.ObjectMeta `json:"metadata"`
				}
				if err := sigsyaml.Unmarshal([]byte(p.Patch), &meta); err != nil {
					t.Errorf("%s: inline patch: %v", dir, err)
				} else if _, ok := base.objects[meta.Kind+"/"+meta.Metadata.Name]; !ok {
					t.Errorf("%s: inline patch targets %s/%s, which the base does not define", dir, meta.Kind, meta.Metadata.Name)
				}
			}
		}
		for f := range o.files {
			if !patched[f] && !slices.Contains(o.kust.Resources, f) {
				t.Errorf("%s: %s is neither a resource nor a patch of the overlay", dir, f)
			}
		}
	}
}

// TestBaseChecksCatchBreakage breaks the base in memory, one way per case,
// and expects the checks to say so: each check can fail.
func TestBaseChecksCatchBreakage(t *testing.T) {
	dep := func(m *manifests, name string) *appsv1.Deployment {
		return m.objects["Deployment/"+name].(*appsv1.Deployment)
	}
	worker := func(m *manifests) *corev1.Container {
		return &dep(m, "certfleet-issuer-worker").Spec.Template.Spec.Containers[0]
	}
	sched := func(m *manifests) *corev1.Container {
		return &dep(m, "certfleet-scheduler").Spec.Template.Spec.Containers[0]
	}
	cm := func(m *manifests, name string) *corev1.ConfigMap {
		return m.objects["ConfigMap/"+name].(*corev1.ConfigMap)
	}
	cases := []struct {
		name  string
		files []string // nil: the directory's
		edit  func(m *manifests)
		want  string
	}{
		{"configMapRef to a missing ConfigMap", nil, func(m *manifests) { worker(m).EnvFrom[0].ConfigMapRef.Name = "nope" }, `configMapRef "nope": no such ConfigMap`},
		{"secretRef to a missing Secret", nil, func(m *manifests) {
			worker(m).EnvFrom = append(worker(m).EnvFrom, corev1.EnvFromSource{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}}})
		}, `secretRef "nope": no such Secret`},
		{"secretKeyRef to a missing key", nil, func(m *manifests) {
			_ = m.add("x.yaml", &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "x"}, StringData: map[string]string{"A": "b"}})
			sched(m).Env = append(sched(m).Env, corev1.EnvVar{Name: "CERTFLEET_BUDGET", ValueFrom: &corev1.EnvVarSource{
				SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "x"}, Key: "DB"}}})
		}, `has no key "DB"`},
		{"secretKeyRef to a missing Secret", nil, func(m *manifests) {
			sched(m).Env = append(sched(m).Env, corev1.EnvVar{Name: "CERTFLEET_BUDGET", ValueFrom: &corev1.EnvVarSource{
				SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "DB"}}})
		}, `secretKeyRef "nope"`},
		{"configMapKeyRef to a missing key", nil, func(m *manifests) {
			sched(m).Env = append(sched(m).Env, corev1.EnvVar{Name: "CERTFLEET_BUDGET", ValueFrom: &corev1.EnvVarSource{
				ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "certfleet-scheduler"}, Key: "BUDGET"}}})
		}, `has no key "BUDGET"`},
		{"env name the binary does not read", nil, func(m *manifests) { cm(m, "certfleet-issuer-worker").Data["CERTFLEET_CONCURENCY"] = "8" }, "CERTFLEET_CONCURENCY (from ConfigMap/certfleet-issuer-worker) is not read by issuer-worker"},
		{"worker-only setting in the common ConfigMap", nil, func(m *manifests) { cm(m, "certfleet-common").Data["CERTFLEET_CONCURRENCY"] = "8" }, "CERTFLEET_CONCURRENCY (from ConfigMap/certfleet-common) is not read by scheduler"},
		{"seal keyring given to the scheduler", nil, func(m *manifests) {
			pod := &dep(m, "certfleet-scheduler").Spec.Template.Spec
			pod.Volumes = append(pod.Volumes, corev1.Volume{Name: "seal", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: "certfleet-seal-keys", DefaultMode: new(int32(0o400))}}})
			sched(m).VolumeMounts = append(sched(m).VolumeMounts, corev1.VolumeMount{Name: "seal", MountPath: "/etc/certfleet/seal", ReadOnly: true})
		}, "mounts Secret certfleet-seal-keys, which only the issuer-workers may see"},
		{"example Secret back in the base", nil, func(m *manifests) {
			_ = m.add("secret.yaml", &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "certfleet-seal-keys"}, StringData: map[string]string{"keyring": "CHANGE-ME"}})
		}, "Secret/certfleet-seal-keys is defined in the base"},
		{"keyring in the environment", nil, func(m *manifests) {
			worker(m).Env = append(worker(m).Env, corev1.EnvVar{Name: "CERTFLEET_SEAL_KEYS", Value: "k=..."})
		}, "CERTFLEET_SEAL_KEYS puts the keyring in the environment"},
		{"secret volume readable by others", nil, func(m *manifests) {
			dep(m, "certfleet-issuer-worker").Spec.Template.Spec.Volumes[1].Secret.DefaultMode = new(int32(0o644))
		}, "defaultMode 0644"},
		{"secret volume without defaultMode", nil, func(m *manifests) {
			dep(m, "certfleet-scheduler").Spec.Template.Spec.Volumes[1].Secret.DefaultMode = nil
		}, "defaultMode unset (0644)"},
		{"secret mounted writable", nil, func(m *manifests) { sched(m).VolumeMounts[1].ReadOnly = false }, "is not mounted read-only"},
		{"no fsGroup", nil, func(m *manifests) {
			m.objects["Job/certfleet-migrate"].(*batchv1.Job).Spec.Template.Spec.SecurityContext.FSGroup = nil
		}, "Job/certfleet-migrate: mounts Secret certfleet-database but sets no pod securityContext.fsGroup"},
		{"Secret nobody creates", nil, func(m *manifests) {
			dep(m, "certfleet-scheduler").Spec.Template.Spec.Volumes[1].Secret.SecretName = "certfleet-kafka"
		}, `Secret "certfleet-kafka" is not one deploy/README.md tells`},
		{"password file not mounted", nil, func(m *manifests) {
			cm(m, "certfleet-common").Data["CERTFLEET_KAFKA_SASL_PASSWORD_FILE"] = "/etc/certfleet/sasl/password"
		}, "CERTFLEET_KAFKA_SASL_PASSWORD_FILE=/etc/certfleet/sasl/password is not a file of any volume mounted"},
		{"keyring not among the mounted keys", nil, func(m *manifests) {
			dep(m, "certfleet-issuer-worker").Spec.Template.Spec.Volumes[3].Secret.Items[0].Path = "keys"
		}, "CERTFLEET_SEAL_KEYS_FILE=/etc/certfleet/seal/keyring is not a file"},
		{"database client key not mounted", nil, func(m *manifests) {
			j := m.objects["Job/certfleet-migrate"].(*batchv1.Job)
			j.Spec.Template.Spec.Containers[0].VolumeMounts = nil
		}, "Job/certfleet-migrate container migrate: CERTFLEET_DATABASE_URL sslrootcert=/etc/certfleet/db/ca.crt is not a file"},
		{"database without verify-full", nil, func(m *manifests) {
			cm(m, "certfleet-common").Data["CERTFLEET_DATABASE_URL"] = "postgresql://certfleet@db.example:26257/certfleet?sslmode=require"
		}, "CERTFLEET_DATABASE_URL needs sslmode=verify-full and sslrootcert"},
		{"database password in a ConfigMap", nil, func(m *manifests) {
			cm(m, "certfleet-common").Data["CERTFLEET_DATABASE_URL"] = strings.Replace(cm(m, "certfleet-common").Data["CERTFLEET_DATABASE_URL"], "certfleet@", "certfleet:pw@", 1)
		}, "holds a password in a ConfigMap"},
		{"SASL without TLS", nil, func(m *manifests) { cm(m, "certfleet-common").Data["CERTFLEET_KAFKA_TLS"] = "false" }, "SASL (scram-sha-512) without TLS"},
		{"NetworkPolicy without the SASL_SSL port", nil, func(m *manifests) {
			np := m.objects["NetworkPolicy/certfleet-scheduler"].(*networkingv1.NetworkPolicy)
			np.Spec.Egress[1].Ports[0].Port = new(intstr.FromInt32(9092))
		}, "Deployment/certfleet-scheduler: no NetworkPolicy egress rule allows port 9093 (Kafka broker"},
		{"auto-provisioning unreplicated", nil, func(m *manifests) {
			cm(m, "certfleet-issuer-worker").Data["CERTFLEET_PROVISION_TOPICS"] = "true"
			cm(m, "certfleet-issuer-worker").Data["CERTFLEET_TOPIC_REPLICATION_FACTOR"] = "1"
		}, "provisions topics with replication factor 1"},
		{"unknown image", nil, func(m *manifests) { worker(m).Image = "busybox:1" }, "is not a certfleet image"},
		{"Service selects nothing", nil, func(m *manifests) {
			m.objects["Service/certfleet-http01"].(*corev1.Service).Spec.Selector["app.kubernetes.io/component"] = "worker"
		}, "Service/certfleet-http01: selector"},
		{"Service targetPort not declared", nil, func(m *manifests) {
			m.objects["Service/certfleet-scheduler-metrics"].(*corev1.Service).Spec.Ports[0].TargetPort = intstr.FromString("prom")
		}, "targetPort prom is not a container port"},
		{"no HTTP-01 Service on port 80", nil, func(m *manifests) {
			m.objects["Service/certfleet-http01"].(*corev1.Service).Spec.Ports[0].Port = 8080
		}, "no Service exposes port 80"},
		{"HPA targets a missing Deployment", nil, func(m *manifests) {
			m.objects["HorizontalPodAutoscaler/certfleet-issuer-worker"].(*autoscalingv2.HorizontalPodAutoscaler).Spec.ScaleTargetRef.Name = "worker"
		}, "is not a Deployment of the base"},
		{"HPA and spec.replicas", nil, func(m *manifests) { dep(m, "certfleet-issuer-worker").Spec.Replicas = new(int32(3)) }, "sets spec.replicas"},
		{"PDB selects nothing", nil, func(m *manifests) {
			m.objects["PodDisruptionBudget/certfleet-scheduler"].(*policyv1.PodDisruptionBudget).Spec.Selector.MatchLabels["app.kubernetes.io/component"] = "sched"
		}, "PodDisruptionBudget/certfleet-scheduler: selects 0 workloads"},
		{"PDB blocks drains", nil, func(m *manifests) {
			m.objects["PodDisruptionBudget/certfleet-scheduler"].(*policyv1.PodDisruptionBudget).Spec.MinAvailable = new(intstr.FromInt32(2))
		}, "blocks every drain"},
		{"one scheduler", nil, func(m *manifests) { dep(m, "certfleet-scheduler").Spec.Replicas = new(int32(1)) }, "wants 2 replicas"},
		{"probe on an undeclared port", nil, func(m *manifests) { worker(m).ReadinessProbe.HTTPGet.Port = intstr.FromInt32(9091) }, "readinessProbe port 9091 is not a declared container port"},
		{"probe on the wrong path", nil, func(m *manifests) { sched(m).LivenessProbe.HTTPGet.Path = "/health" }, `livenessProbe path "/health"`},
		{"listen on loopback", nil, func(m *manifests) { cm(m, "certfleet-scheduler").Data["CERTFLEET_LISTEN"] = "127.0.0.1:9090" }, "listens on loopback only"},
		{"listen port differs from containerPort", nil, func(m *manifests) { cm(m, "certfleet-issuer-worker").Data["CERTFLEET_HTTP01_LISTEN"] = "0.0.0.0:80" }, `container port "http01" is 8080`},
		{"grace period too short", nil, func(m *manifests) {
			dep(m, "certfleet-issuer-worker").Spec.Template.Spec.TerminationGracePeriodSeconds = new(int64(30))
		}, "terminationGracePeriodSeconds 30 is not longer"},
		{"root container", nil, func(m *manifests) { sched(m).SecurityContext.RunAsUser = new(int64(0)) }, "runs as root"},
		{"pod may run as root", nil, func(m *manifests) {
			m.objects["Job/certfleet-migrate"].(*batchv1.Job).Spec.Template.Spec.SecurityContext.RunAsNonRoot = nil
		}, "Job/certfleet-migrate: pod securityContext must set runAsNonRoot"},
		{"writable root filesystem", nil, func(m *manifests) { worker(m).SecurityContext.ReadOnlyRootFilesystem = new(false) }, "readOnlyRootFilesystem must be true"},
		{"no resources", nil, func(m *manifests) { worker(m).Resources = corev1.ResourceRequirements{} }, "resources must request"},
		{"missing ServiceAccount", nil, func(m *manifests) { dep(m, "certfleet-scheduler").Spec.Template.Spec.ServiceAccountName = "sched" }, `serviceAccountName "sched"`},
		{"NetworkPolicy selects nothing", nil, func(m *manifests) {
			m.objects["NetworkPolicy/certfleet-scheduler"].(*networkingv1.NetworkPolicy).Spec.PodSelector.MatchLabels["app.kubernetes.io/component"] = "x"
		}, "NetworkPolicy/certfleet-scheduler: podSelector"},
		{"NetworkPolicy port name unknown", nil, func(m *manifests) {
			m.objects["NetworkPolicy/certfleet-issuer-worker"].(*networkingv1.NetworkPolicy).Spec.Ingress[0].Ports[0].Port = new(intstr.FromString("http"))
		}, `ingress port "http" is not a container port`},
		{"spread selector misses the pods", nil, func(m *manifests) {
			dep(m, "certfleet-issuer-worker").Spec.Template.Spec.TopologySpreadConstraints[0].LabelSelector.MatchLabels["app.kubernetes.io/component"] = "x"
		}, "topology spread or anti-affinity selector"},
		{"kustomization misses a file", []string{"extra.yaml"}, nil, "extra.yaml is in the directory but not in resources"},
		{"kustomization lists a missing file", nil, func(m *manifests) { m.kust.Resources = append(m.kust.Resources, "gone.yaml") }, "resource gone.yaml is not a manifest"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := loadDir(t, baseDir)
			files := manifestFiles(t, baseDir)
			if tc.files != nil {
				files = append(files, tc.files...)
			}
			if tc.edit != nil {
				tc.edit(m)
			}
			errs := baseChecks(t, m, files)
			for _, err := range errs {
				if strings.Contains(err.Error(), tc.want) {
					return
				}
			}
			t.Errorf("no error containing %q; got %v", tc.want, errs)
		})
	}
}

func TestStrictDecodingRejectsUnknownFields(t *testing.T) {
	for _, doc := range []string{
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 2}\n",
		"apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80, targetport: 8080}]}\n",
		"apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: x}\n",
		"apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n",
		"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {A: \"1\", A: \"2\"}\n",
		"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {A: 1}\n", // a number, not a string
		"apiVersion: v1\nkind: Secret\nmetadata: {name: x}\nstringdata: {A: b}\n",
	} {
		if _, err := decodeManifests([]byte(doc)); err == nil {
			t.Errorf("decoded without error:\n%s", doc)
		}
	}
	var k kustomization
	if err := unmarshalYAMLStrict([]byte("resources: [a.yaml]\npatchesStrategicMerge: [b.yaml]\n"), &k); err == nil {
		t.Error("kustomization with an unknown field decoded without error")
	}
}

// ---------------------------------------------------------------------------
// Dockerfile.

// checkDockerfile: a golang:1.26 build stage with CGO_ENABLED=0, and a
// distroless runtime stage running as nonroot.
func checkDockerfile(text string) []error {
	var errs []error
	type stage struct {
		from         string
		user         string
		cgoDisabled  bool
		instructions []string
	}
	var stages []*stage
	args := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	var line strings.Builder
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if line.Len() == 0 && (l == "" || strings.HasPrefix(l, "#")) {
			continue
		}
		if strings.HasPrefix(l, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(l, `\`); ok {
			line.WriteString(s + " ")
			continue
		}
		line.WriteString(l)
		full := line.String()
		line.Reset()
		instr, rest, _ := strings.Cut(full, " ")
		instr = strings.ToUpper(instr)
		rest = strings.TrimSpace(rest)
		expand := func(s string) string {
			return os.Expand(s, func(k string) string { return args[k] })
		}
		switch {
		case instr == "ARG" && len(stages) == 0:
			k, v, _ := strings.Cut(rest, "=")
			args[k] = v
		case instr == "FROM":
			img := strings.Fields(rest)[0]
			stages = append(stages, &stage{from: expand(img)})
		case len(stages) == 0:
			errs = append(errs, fmt.Errorf("Dockerfile: %s before the first FROM", instr))
		case instr == "USER":
			stages[len(stages)-1].user = rest
		case (instr == "ENV" || instr == "RUN" || instr == "ARG") && regexp.MustCompile(`\bCGO_ENABLED=0\b`).MatchString(rest):
			stages[len(stages)-1].cgoDisabled = true
		}
		if len(stages) > 0 {
			st := stages[len(stages)-1]
			st.instructions = append(st.instructions, instr)
		}
	}
	if len(stages) < 2 {
		return append(errs, fmt.Errorf("Dockerfile: %d stages, want a build stage and a runtime stage", len(stages)))
	}
	build, run := stages[0], stages[len(stages)-1]
	if !strings.HasPrefix(build.from, "golang:1.26") {
		errs = append(errs, fmt.Errorf("Dockerfile: build stage FROM %s, want golang:1.26", build.from))
	}
	if !build.cgoDisabled {
		errs = append(errs, errors.New("Dockerfile: the build stage does not set CGO_ENABLED=0 (the static distroless image has no libc)"))
	}
	if !strings.HasPrefix(run.from, "gcr.io/distroless/static") || !strings.HasSuffix(run.from, ":nonroot") {
		errs = append(errs, fmt.Errorf("Dockerfile: runtime stage FROM %s, want gcr.io/distroless/static-debian12:nonroot", run.from))
	}
	user := strings.Split(run.user, ":")[0]
	if user != "nonroot" && user != "65532" {
		errs = append(errs, fmt.Errorf("Dockerfile: runtime stage USER %q, want nonroot (65532)", run.user))
	}
	if slices.Contains(run.instructions, "RUN") {
		errs = append(errs, errors.New("Dockerfile: RUN in the distroless runtime stage (it has no shell)"))
	}
	return errs
}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("docker/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range checkDockerfile(string(data)) {
		t.Error(err)
	}
	// And the check can fail.
	for _, tc := range []struct{ old, new, want string }{
		{"USER nonroot:nonroot", "USER root", `USER "root"`},
		{"USER nonroot:nonroot", "", `USER ""`},
		{"static-debian12:nonroot", "static-debian12", "want gcr.io/distroless/static-debian12:nonroot"},
		{"FROM gcr.io/distroless/static-debian12:nonroot", "FROM debian:12", "runtime stage FROM debian:12"},
		{"ARG GO_VERSION=1.26", "ARG GO_VERSION=1.22", "build stage FROM golang:1.22"},
		{"CGO_ENABLED=0", "CGO_ENABLED=1", "CGO_ENABLED=0"},
	} {
		broken := strings.Replace(string(data), tc.old, tc.new, 1)
		if broken == string(data) {
			t.Errorf("mutation %q not applicable", tc.old)
			continue
		}
		if errs := checkDockerfile(broken); !containsErr(errs, tc.want) {
			t.Errorf("Dockerfile with %q -> %q: no error containing %q; got %v", tc.old, tc.new, tc.want, errs)
		}
	}
}

func containsErr(errs []error, want string) bool {
	for _, err := range errs {
		if strings.Contains(err.Error(), want) {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------------------
// Docker Compose.

func checkCompose(t *testing.T, data []byte) []error {
	rd := envReaders(t)
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	var doc struct {
		Services map[string]map[string]any `json:"services"`
	}
	if err := sigsyaml.Unmarshal(data, &doc); err != nil {
		return []error{fmt.Errorf("docker-compose.yaml: %v", err)}
	}
	if len(doc.Services) == 0 {
		return []error{errors.New("docker-compose.yaml: no services")}
	}
	images := map[string]bool{}
	certfleet := 0
	for _, name := range sortedKeys(doc.Services) {
		svc := doc.Services[name]
		if img, ok := svc["image"].(string); ok {
			images[strings.Split(img, ":")[0]] = true
		}
		for dep, v := range asMap(svc["depends_on"]) {
			target, ok := doc.Services[dep]
			if !ok {
				bad("compose service %s: depends_on %s, which is not a service", name, dep)
				continue
			}
			if cond, _ := asMap(v)["condition"].(string); cond == "service_healthy" && target["healthcheck"] == nil {
				bad("compose service %s: waits for %s to be healthy, but %s has no healthcheck", name, dep, dep)
			}
		}
		var mounts []string
		for _, v := range asSlice(svc["volumes"]) {
			if s, ok := v.(string); ok {
				parts := strings.Split(s, ":")
				if strings.HasPrefix(parts[0], ".") {
					if _, err := os.Stat(filepath.Join("compose", parts[0])); err != nil {
						bad("compose service %s: volume source %s: %v", name, parts[0], err)
					}
				}
				if len(parts) > 1 {
					mounts = append(mounts, parts[1])
				}
			}
		}
		build := asMap(svc["build"])
		if build == nil {
			continue
		}
		bin, _ := asMap(build["args"])["BINARY"].(string)
		if !slices.Contains(binaries, bin) {
			bad("compose service %s: build arg BINARY=%q, want one of %v", name, bin, binaries)
			continue
		}
		if df, _ := build["dockerfile"].(string); df != "deploy/docker/Dockerfile" {
			bad("compose service %s: dockerfile %q, want deploy/docker/Dockerfile", name, df)
		}
		certfleet++
		env := composeEnv(svc["environment"])
		if len(env) == 0 {
			bad("compose service %s: no environment", name)
		}
		for _, k := range sortedKeys(env) {
			if !rd[bin][k] {
				bad("compose service %s: environment %s is not read by %s", name, k, bin)
			}
		}
		if u, err := url.Parse(env["CERTFLEET_DATABASE_URL"]); err == nil && u.Host != "" && u.Query().Get("sslmode") != "verify-full" {
			if on, _ := strconv.ParseBool(env["CERTFLEET_DATABASE_INSECURE"]); !on {
				bad("compose service %s: CERTFLEET_DATABASE_URL reaches %s without sslmode=verify-full and CERTFLEET_DATABASE_INSECURE is not true: the binary would refuse to start", name, u.Host)
			}
		}
		if k, ok := env[seal.EnvKeyring]; ok {
			if _, err := seal.ParseKeyring(k); err != nil {
				bad("compose service %s: %s: %v", name, seal.EnvKeyring, err)
			}
		}
		if ca := env["CERTFLEET_ACME_TLS_CA"]; ca != "" && !slices.Contains(mounts, ca) {
			bad("compose service %s: CERTFLEET_ACME_TLS_CA=%s is not a mounted file", name, ca)
		}
		if l, ok := env["CERTFLEET_LISTEN"]; ok {
			if host, _, err := net.SplitHostPort(l); err != nil || strings.HasPrefix(host, "127.") {
				bad("compose service %s: CERTFLEET_LISTEN=%q is not reachable from other containers", name, l)
			}
		}
	}
	for _, img := range []string{"apache/kafka", "cockroachdb/cockroach", "ghcr.io/letsencrypt/pebble", "ghcr.io/letsencrypt/pebble-challtestsrv"} {
		if !images[img] {
			bad("docker-compose.yaml: no service uses the official image %s", img)
		}
	}
	if certfleet < 3 {
		bad("docker-compose.yaml: %d certfleet services built from the Dockerfile, want worker, scheduler and migrate", certfleet)
	}
	return errs
}

func asMap(v any) map[string]any {
	switch v := v.(type) {
	case map[string]any:
		return v
	case []any: // depends_on: [a, b]
		m := map[string]any{}
		for _, e := range v {
			if s, ok := e.(string); ok {
				m[s] = nil
			}
		}
		return m
	}
	return nil
}

func asSlice(v any) []any { s, _ := v.([]any); return s }

// composeEnv reads environment in its map or its list ("K=V") form.
func composeEnv(v any) map[string]string {
	env := map[string]string{}
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			env[k] = fmt.Sprint(x)
		}
	case []any:
		for _, e := range v {
			k, x, _ := strings.Cut(fmt.Sprint(e), "=")
			env[k] = x
		}
	}
	return env
}

func TestCompose(t *testing.T) {
	data, err := os.ReadFile("compose/docker-compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range checkCompose(t, data) {
		t.Error(err)
	}
	// The merge keys (<<: *worker-env) must have been resolved, or the
	// workers' environment above would have been empty.
	for _, tc := range []struct{ old, new, want string }{
		{"CERTFLEET_WORKER_ID: issuer-worker-1", "CERTFLEET_WORKER_NAME: issuer-worker-1", "environment CERTFLEET_WORKER_NAME is not read by issuer-worker"},
		{"CERTFLEET_BUDGET: 10/1s", "CERTFLEET_CONCURRENCY: \"4\"", "environment CERTFLEET_CONCURRENCY is not read by scheduler"},
		{"      CERTFLEET_DATABASE_INSECURE: *database-insecure\n    restart: \"no\"", "      CERTFLEET_DATABASE_INSECURE: *database-insecure\n      CERTFLEET_KAFKA_BROKERS: kafka:9092\n    restart: \"no\"", ""},
		{"      CERTFLEET_DATABASE_INSECURE: *database-insecure\n    restart: \"no\"", "    restart: \"no\"", "compose service migrate: CERTFLEET_DATABASE_URL reaches cockroach:26257 without sslmode=verify-full"},
		{"demo=SPumUnWke3OQaODCJ4rhU7XntYxywqnABrpLLTRDcsU=", "demo=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "is all zero bytes"},
		{"        condition: service_healthy\n    networks: [certfleet]", "        condition: service_healthy\n      nowhere:\n        condition: service_started\n    networks: [certfleet]", "depends_on nowhere"},
		{"    healthcheck:\n      test: [\"CMD\", \"/opt/kafka", "    x-healthcheck:\n      test: [\"CMD\", \"/opt/kafka", "but kafka has no healthcheck"},
		{"image: apache/kafka:4.1.1", "image: bitnami/kafka:4.1", "official image apache/kafka"},
		{"CERTFLEET_LISTEN: 0.0.0.0:9090\n      CERTFLEET_SHUTDOWN", "CERTFLEET_LISTEN: 127.0.0.1:9090\n      CERTFLEET_SHUTDOWN", "is not reachable from other containers"},
		{"BINARY: scheduler", "BINARY: sched", `BINARY="sched"`},
	} {
		broken := strings.Replace(string(data), tc.old, tc.new, 1)
		if broken == string(data) {
			t.Errorf("mutation %q not applicable", tc.old)
			continue
		}
		errs := checkCompose(t, []byte(broken))
		if tc.want == "" {
			// certfleet migrate reads only the database URL.
			tc.want = "environment CERTFLEET_KAFKA_BROKERS is not read by certfleet"
			if rd := envReaders(t); rd["certfleet"]["CERTFLEET_KAFKA_BROKERS"] {
				continue // the admin tool reads it (request, dlq); nothing to catch
			}
		}
		if !containsErr(errs, tc.want) {
			t.Errorf("compose with %q: no error containing %q; got %v", tc.new, tc.want, errs)
		}
	}
}

// ---------------------------------------------------------------------------
// Grafana.

var (
	metricRE = regexp.MustCompile(`\bcertfleet_[a-z0-9_]+\b`)
	byRE     = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// targetLabels are attached by Prometheus (and Kubernetes service
// discovery), not by the code.
var targetLabels = []string{"instance", "job", "pod", "namespace", "container"}

func checkDashboard(t *testing.T, data []byte) []error {
	known := goMetrics(t)
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	var dash struct {
		Title  string            `json:"title"`
		UID    string            `json:"uid"`
		Panels []json.RawMessage `json:"panels"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&dash); err != nil {
		return []error{fmt.Errorf("dashboard: %v", err)}
	}
	if dash.Title == "" || dash.UID == "" {
		bad("dashboard: no title or uid")
	}
	type panel struct {
		ID      int                 `json:"id"`
		Type    string              `json:"type"`
		Title   string              `json:"title"`
		Panels  []json.RawMessage   `json:"panels"`
		GridPos *struct{ W, H int } `json:"gridPos"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	}
	used := map[string]bool{}
	ids := map[int]bool{}
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				bad("dashboard: panel: %v", err)
				continue
			}
			if ids[p.ID] {
				bad("dashboard: panel id %d used twice", p.ID)
			}
			ids[p.ID] = true
			if p.GridPos == nil || p.GridPos.W == 0 {
				bad("dashboard: panel %q has no gridPos", p.Title)
			}
			walk(p.Panels)
			if p.Type != "row" && len(p.Targets) == 0 {
				bad("dashboard: panel %q queries nothing", p.Title)
			}
			for _, tg := range p.Targets {
				var labelsOK []string
				metrics := metricRE.FindAllString(tg.Expr, -1)
				if len(metrics) == 0 {
					bad("dashboard: panel %q: query %q names no certfleet_ metric", p.Title, tg.Expr)
				}
				for _, name := range metrics {
					info, ok := known[name]
					if !ok {
						for _, suf := range []string{"_bucket", "_sum", "_count"} {
							if b, found := strings.CutSuffix(name, suf); found && known[b].histogram {
								name, info, ok = b, known[b], true
								if suf == "_bucket" {
									labelsOK = append(labelsOK, "le")
								}
							}
						}
					}
					if !ok {
						bad("dashboard: panel %q queries %s, which no Go source registers", p.Title, name)
						continue
					}
					used[name] = true
					labelsOK = append(labelsOK, info.labels...)
				}
				for _, m := range byRE.FindAllStringSubmatch(tg.Expr, -1) {
					for _, l := range strings.Split(m[1], ",") {
						if l = strings.TrimSpace(l); l != "" && !slices.Contains(labelsOK, l) && !slices.Contains(targetLabels, l) {
							bad("dashboard: panel %q groups by %q, a label none of its metrics has", p.Title, l)
						}
					}
				}
			}
		}
	}
	walk(dash.Panels)
	for _, want := range []string{"certfleet_worker_jobs_total", "certfleet_worker_order_duration_seconds",
		"certfleet_worker_tokens_denied_total", "certfleet_worker_jobs_in_flight", "certfleet_scheduler_due_backlog",
		"certfleet_scheduler_most_overdue_seconds", "certfleet_scheduler_leader", "certfleet_scheduler_lease_token"} {
		if !used[want] {
			bad("dashboard: no panel shows %s", want)
		}
	}
	if !strings.Contains(string(data), "histogram_quantile(0.99, sum by (le) (rate(certfleet_worker_order_duration_seconds_bucket") ||
		!strings.Contains(string(data), "histogram_quantile(0.5, sum by (le) (rate(certfleet_worker_order_duration_seconds_bucket") {
		bad("dashboard: no p50/p99 of the order duration histogram")
	}
	return errs
}

func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile("grafana/certfleet-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range checkDashboard(t, data) {
		t.Error(err)
	}
	for _, tc := range []struct{ old, new, want string }{
		{"rate(certfleet_worker_tokens_denied_total", "rate(certfleet_worker_tokens_refused_total", "queries certfleet_worker_tokens_refused_total, which no Go source registers"},
		{"sum by (limit)", "sum by (limt)", `groups by "limt"`},
		{`"panels": [`, `"panels": [,`, "dashboard: invalid character"},
		{"max(certfleet_scheduler_lease_token)", "max(certfleet_scheduler_leader)", "no panel shows certfleet_scheduler_lease_token"},
	} {
		broken := strings.Replace(string(data), tc.old, tc.new, 1)
		if broken == string(data) {
			t.Errorf("mutation %q not applicable", tc.old)
			continue
		}
		if errs := checkDashboard(t, []byte(broken)); !containsErr(errs, tc.want) {
			t.Errorf("dashboard with %q: no error containing %q; got %v", tc.new, tc.want, errs)
		}
	}
}

func TestGoMetricsFound(t *testing.T) {
	m := goMetrics(t)
	if info := m["certfleet_worker_jobs_total"]; !slices.Equal(info.labels, []string{"outcome"}) {
		t.Errorf("certfleet_worker_jobs_total labels %v, want [outcome]", info.labels)
	}
	if !m["certfleet_worker_order_duration_seconds"].histogram {
		t.Error("certfleet_worker_order_duration_seconds not seen as a histogram")
	}
}

// ---------------------------------------------------------------------------
// CockroachDB changefeed.

func checkChangefeed(sql, migration string) []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	// Drop comments.
	var b strings.Builder
	for l := range strings.Lines(sql) {
		if i := strings.Index(l, "--"); i >= 0 {
			l = l[:i] + "\n"
		}
		b.WriteString(l)
	}
	code := b.String()
	i := strings.Index(code, "CREATE CHANGEFEED")
	if i < 0 {
		return []error{errors.New("changefeed.sql: no CREATE CHANGEFEED")}
	}
	stmt := code[i:]
	if j := strings.Index(stmt, ";"); j >= 0 {
		stmt = stmt[:j]
	}
	with, sel, ok := strings.Cut(stmt, "AS SELECT")
	if !ok {
		return []error{errors.New("changefeed.sql: not a CDC query (CREATE CHANGEFEED ... AS SELECT): a plain table changefeed wraps the row in {\"after\": ...}")}
	}
	if !strings.Contains(with, "topic_name="+ratelimit.ChangesTopic+"'") && !strings.Contains(with, "topic_name="+ratelimit.ChangesTopic+"&") {
		bad("changefeed.sql: the sink URI's topic_name is not %s", ratelimit.ChangesTopic)
	}
	if !regexp.MustCompile(`envelope\s*=\s*'bare'`).MatchString(with) {
		bad("changefeed.sql: envelope must be 'bare' (the consumer decodes the value as a ChangeEvent at the top level)")
	}
	for _, opt := range []string{"resolved", "updated", "mvcc_timestamp", "key_in_value", "diff"} {
		if regexp.MustCompile(`\b` + opt + `\b`).MatchString(with) {
			bad("changefeed.sql: option %s changes the message the consumer decodes", opt)
		}
	}
	if !strings.Contains(sel, "FROM ratelimit_outbox") {
		bad("changefeed.sql: does not select FROM ratelimit_outbox")
	}
	// The projection names every JSON field of ratelimit.ChangeEvent.
	proj, _, _ := strings.Cut(sel, "FROM")
	aliases := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?i)\bAS\s+"?([a-z_]+)"?`).FindAllStringSubmatch(proj, -1) {
		aliases[m[1]] = true
	}
	ev := reflect.TypeFor[ratelimit.ChangeEvent]()
	for i := range ev.NumField() {
		f := ev.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		if !aliases[tag] {
			bad("changefeed.sql: the projection has no column %q (ChangeEvent.%s)", tag, f.Name)
		}
		delete(aliases, tag)
	}
	for a := range aliases {
		bad("changefeed.sql: column %q is not a field of ratelimit.ChangeEvent", a)
	}
	// The columns it reads exist in the outbox table.
	tbl := regexp.MustCompile(`(?s)CREATE TABLE IF NOT EXISTS ratelimit_outbox \((.*?)\);`).FindStringSubmatch(migration)
	if tbl == nil {
		return append(errs, errors.New("0002_ratelimit.sql: no ratelimit_outbox table"))
	}
	for _, col := range []string{"payload", "topic", "published_at"} {
		if !regexp.MustCompile(`(?m)^\s*` + col + `\s`).MatchString(tbl[1]) {
			bad("changefeed.sql reads ratelimit_outbox.%s, which the migration does not define", col)
		}
		if !strings.Contains(sel, col) {
			bad("changefeed.sql does not use %s", col)
		}
	}
	return errs
}

func TestChangefeedSQL(t *testing.T) {
	sql, err := os.ReadFile("cockroachdb/changefeed.sql")
	if err != nil {
		t.Fatal(err)
	}
	mig, err := os.ReadFile(filepath.Join(root, "schema/migrations/0002_ratelimit.sql"))
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range checkChangefeed(string(sql), string(mig)) {
		t.Error(err)
	}
	for _, tc := range []struct{ old, new, want string }{
		{"AS limit_name", "AS limit", `no column "limit_name"`},
		{"envelope = 'bare'", "envelope = 'wrapped'", "envelope must be 'bare'"},
		{"initial_scan = 'no',", "initial_scan = 'no', resolved = '10s',", "option resolved"},
		{"topic_name=certfleet.ratelimit.changes", "topic_name=ratelimit_changes", "topic_name is not"},
		{"  AS SELECT\n", "  AS  SELECT\n", "not a CDC query"},
		{"AS at\n", "AS at,\n    created_at AS created_at\n", `column "created_at" is not a field`},
	} {
		broken := strings.Replace(string(sql), tc.old, tc.new, 1)
		if broken == string(sql) {
			t.Errorf("mutation %q not applicable", tc.old)
			continue
		}
		if errs := checkChangefeed(broken, string(mig)); !containsErr(errs, tc.want) {
			t.Errorf("changefeed with %q: no error containing %q; got %v", tc.new, tc.want, errs)
		}
	}
	if errs := checkChangefeed(string(sql), strings.Replace(string(mig), "published_at TIMESTAMPTZ", "sent_at TIMESTAMPTZ", 1)); !containsErr(errs, "ratelimit_outbox.published_at") {
		t.Errorf("a renamed outbox column went unnoticed: %v", errs)
	}
}

// TestEnvReaders pins a few names so a broken scanner cannot pass every
// check by reading nothing (or everything).
func TestEnvReaders(t *testing.T) {
	rd := envReaders(t)
	for _, tc := range []struct {
		bin, name string
		want      bool
	}{
		{"issuer-worker", "CERTFLEET_KAFKA_BROKERS", true},
		{"issuer-worker", "CERTFLEET_SEAL_KEYS", true}, // via seal's EnvKeyring
		{"issuer-worker", "CERTFLEET_HTTP01_LISTEN", true},
		{"issuer-worker", "CERTFLEET_LEASE_TTL", false},
		{"scheduler", "CERTFLEET_LEASE_TTL", true},
		{"scheduler", "CERTFLEET_SEAL_KEYS", false}, // links seal, never reads the keyring
		{"certfleet", "CERTFLEET_SEAL_KEYS", true},  // export: seal.LoadKeyringEnv(seal.EnvKeyring)
		{"scheduler", "CERTFLEET_HTTP01_LISTEN", false},
		{"certfleet", "CERTFLEET_DATABASE_URL", true},
		{"certfleet", "CERTFLEET_PEBBLE_ROOT", false}, // testenv's, not the tool's
	} {
		if rd[tc.bin][tc.name] != tc.want {
			t.Errorf("%s reads %s: got %v, want %v", tc.bin, tc.name, !tc.want, tc.want)
		}
	}
}
