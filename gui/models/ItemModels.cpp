#include "gui/models/ItemModels.h"

#include <QColor>
#include <cmath>

namespace spkv::gui {
namespace {
double ratio(int64_t a, int64_t b) { return b > 0 ? double(a) / double(b) : std::nan(""); }
}  // namespace

QString formatNumber(double x, int digits) { return std::isfinite(x) ? QString::number(x, 'f', digits) : QStringLiteral("–"); }

QString formatMib(double bytes) {
  const double m = bytes / (1024.0 * 1024.0);
  return m >= 10240 ? QString::number(m / 1024.0, 'f', 1) + " GiB" : QString::number(m, 'f', 1) + " MiB";
}

// --- DensityModel -----------------------------------------------------------------------------------
void DensityModel::setCounts(int64_t layers, int64_t heads, std::vector<int64_t> kept, std::vector<int64_t> eligible,
                             std::vector<double> lo, std::vector<double> hi, QString scope) {
  const bool reshape = layers != L_ || heads != H_;
  if (reshape) beginResetModel();
  L_ = layers, H_ = heads, m_kept = std::move(kept), m_eligible = std::move(eligible), m_lo = std::move(lo), m_hi = std::move(hi);
  m_scope = std::move(scope);
  if (m_global.size() != size_t(L_ * H_)) m_global.clear();
  if (m_reference.size() != size_t(L_ * H_)) m_reference.clear();
  if (reshape) endResetModel();
  else if (L_ * H_ > 0) emit dataChanged(index(0, 0), index(int(L_ - 1), int(H_ - 1)));
}

void DensityModel::setGlobal(std::vector<uint8_t> flags) {
  m_global = flags.size() == size_t(L_ * H_) ? std::move(flags) : std::vector<uint8_t>{};
  if (L_ * H_ > 0) emit dataChanged(index(0, 0), index(int(L_ - 1), int(H_ - 1)), {GlobalRole});
}

void DensityModel::setReference(std::vector<uint8_t> flags) {
  m_reference = flags.size() == size_t(L_ * H_) ? std::move(flags) : std::vector<uint8_t>{};
  if (L_ * H_ > 0) emit dataChanged(index(0, 0), index(int(L_ - 1), int(H_ - 1)), {ReferenceRole});
}

double DensityModel::density(int layer, int head) const {
  if (layer < 0 || layer >= L_ || head < 0 || head >= H_ || m_kept.empty()) return std::nan("");
  const size_t i = size_t(layer * H_ + head);
  return ratio(m_kept[i], m_eligible[i]);
}

std::pair<int64_t, int64_t> DensityModel::totals() const {
  int64_t k = 0, e = 0;
  for (size_t i = 0; i < m_kept.size(); ++i) k += m_kept[i], e += m_eligible[i];
  return {k, e};
}

int DensityModel::rowCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : int(L_); }
int DensityModel::columnCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : int(H_); }

QVariant DensityModel::data(const QModelIndex& index, int role) const {
  if (!checkIndex(index, CheckIndexOption::IndexIsValid)) return {};
  const size_t i = size_t(index.row() * H_ + index.column());
  const double d = density(index.row(), index.column());
  switch (role) {
    case Qt::DisplayRole: return formatNumber(d, 3);
    case DensityRole: return d;
    case GlobalRole: return !m_global.empty() && m_global[i] != 0;
    case ReferenceRole: return !m_reference.empty() && m_reference[i] != 0;
    case Qt::ToolTipRole: {
      QString s = QStringLiteral("layer %1, KV head %2%3\ndensity %4 (kept %5 of %6 eligible keys)")
                      .arg(index.row()).arg(index.column()).arg(m_scope.isEmpty() ? QString() : " (" + m_scope + ")")
                      .arg(formatNumber(d, 4)).arg(m_kept[i]).arg(m_eligible[i]);
      if (!m_lo.empty()) s += QStringLiteral("\nacross documents: 5%–95% [%1, %2]").arg(formatNumber(m_lo[i], 3), formatNumber(m_hi[i], 3));
      if (!m_global.empty()) s += m_global[i] ? "\nlayout: global" : "\nlayout: local";
      return s;
    }
    default: return {};
  }
}

QVariant DensityModel::headerData(int section, Qt::Orientation o, int role) const {
  if (role != Qt::DisplayRole || section < 0) return {};
  if (o == Qt::Vertical) return section < L_ ? QVariant(QStringLiteral("layer %1").arg(section)) : QVariant();
  return section < H_ ? QVariant(QStringLiteral("head %1").arg(section)) : QVariant();
}

// --- DocumentModel ----------------------------------------------------------------------------------
void DocumentModel::setCorpus(const Corpus* c, const CorpusStats* s) {
  beginResetModel();
  m_corpus = c && s ? c : nullptr, m_stats = c && s ? s : nullptr;
  m_ids.clear(), m_tokens.clear(), m_density.clear(), m_compression.clear();
  if (m_corpus) {
    for (int64_t d = 0; d < c->D(); ++d) {
      m_ids.push_back(QString::fromStdString(c->ids[d])), m_tokens.push_back(c->tokens(d));
      m_density.push_back(s->docDensity[size_t(d)]), m_compression.push_back(s->report.compression[size_t(d)].compression);
    }
  }
  fillHeadDensity();
  endResetModel();
}

void DocumentModel::setHead(int64_t layer, int64_t head) {
  m_layer = layer, m_head = head;
  fillHeadDensity();
  if (!m_ids.empty()) emit dataChanged(index(0, HeadDensity), index(rowCount() - 1, HeadDensity));
  emit headerDataChanged(Qt::Horizontal, HeadDensity, HeadDensity);
}

void DocumentModel::fillHeadDensity() {
  m_headDensity.clear();
  if (!m_corpus) return;
  const int64_t LH = m_corpus->LH(), i = m_layer * m_corpus->info.n_kv_heads + m_head;
  for (size_t d = 0; d < m_ids.size(); ++d)
    m_headDensity.push_back(i < LH ? ratio(m_stats->kept[d * size_t(LH) + size_t(i)], m_corpus->eligible[d * size_t(LH) + size_t(i)])
                                   : std::nan(""));
}

int DocumentModel::rowCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : int(m_ids.size()); }
int DocumentModel::columnCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : ColumnCount; }

QVariant DocumentModel::data(const QModelIndex& index, int role) const {
  if (!checkIndex(index, CheckIndexOption::IndexIsValid)) return {};
  const size_t d = size_t(index.row());
  if (role == Qt::DisplayRole) {
    switch (index.column()) {
      case Id: return m_ids[d];
      case Tokens: return qlonglong(m_tokens[d]);
      case Density: return formatNumber(m_density[d], 3);
      case HeadDensity: return formatNumber(m_headDensity[d], 3);
      case Compression: return formatNumber(m_compression[d], 2) + "×";
    }
  }
  if (role == Qt::UserRole) {  // sort key
    switch (index.column()) {
      case Id: return m_ids[d];
      case Tokens: return qlonglong(m_tokens[d]);
      case Density: return m_density[d];
      case HeadDensity: return m_headDensity[d];
      case Compression: return m_compression[d];
    }
  }
  if (role == Qt::TextAlignmentRole && index.column() != Id) return int(Qt::AlignRight | Qt::AlignVCenter);
  return {};
}

QVariant DocumentModel::headerData(int section, Qt::Orientation o, int role) const {
  if (role != Qt::DisplayRole || o != Qt::Horizontal) return {};
  if (section == HeadDensity) return QStringLiteral("L%1.H%2").arg(m_layer).arg(m_head);
  static const char* names[] = {"document", "tokens", "density", "", "compression"};
  return section >= 0 && section < ColumnCount ? QVariant(names[section]) : QVariant();
}

// --- TokenDetailModel -------------------------------------------------------------------------------
void TokenDetailModel::setToken(const Document* doc, int64_t t, int64_t layers, int64_t heads, const KeptRule& rule) {
  beginResetModel();
  L_ = layers, H_ = heads, m_t = doc && t >= 0 && t < doc->T ? t : -1;
  m_u.clear(), m_kept.clear();
  if (m_t >= 0)
    for (int64_t i = 0; i < L_ * H_; ++i) m_u.push_back(halfToFloat(doc->u[size_t(m_t * doc->LH + i)])), m_kept.push_back(doc->kept(m_t, i, rule));
  endResetModel();
}

int TokenDetailModel::rowCount(const QModelIndex& parent) const { return parent.isValid() || m_t < 0 ? 0 : int(L_); }
int TokenDetailModel::columnCount(const QModelIndex& parent) const { return parent.isValid() || m_t < 0 ? 0 : int(H_); }

QVariant TokenDetailModel::data(const QModelIndex& index, int role) const {
  if (!checkIndex(index, CheckIndexOption::IndexIsValid)) return {};
  const size_t i = size_t(index.row() * H_ + index.column());
  switch (role) {
    case Qt::DisplayRole: return QStringLiteral("%1 %2").arg(m_kept[i] ? "●" : "○").arg(double(m_u[i]), 0, 'f', 3);
    case KeptRole: return m_kept[i] != 0;
    case DensityRole: return double(m_u[i]);
    case Qt::ToolTipRole:
      return QStringLiteral("token %1, layer %2, KV head %3: u = %4, %5").arg(m_t).arg(index.row()).arg(index.column())
          .arg(double(m_u[i]), 0, 'f', 4).arg(m_kept[i] ? "kept" : "dropped once out of the window");
    case Qt::BackgroundRole: return m_kept[i] ? QColor(205, 232, 250) : QColor(250, 222, 205);
    default: return {};
  }
}

QVariant TokenDetailModel::headerData(int section, Qt::Orientation o, int role) const {
  if (role != Qt::DisplayRole || section < 0) return {};
  if (o == Qt::Vertical) return section < L_ ? QVariant(QStringLiteral("layer %1").arg(section)) : QVariant();
  return section < H_ ? QVariant(QStringLiteral("head %1").arg(section)) : QVariant();
}

}  // namespace spkv::gui
